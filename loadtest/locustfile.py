"""The fusionrec load mix for locust: what an e-commerce frontend sends.

    FUSIONREC_LOADTEST_DATA=/data/ml locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Weights (of requests): 70 % POST /v1/recommend with a history drawn from a real user of the
dataset (a random window of that user's interactions, in time order, sometimes by user id
only), 15 % POST /v1/search with a query built from a title and/or genres, 10 % POST
/v1/events, 5 % GET /v1/items/{id}.

Environment:

* ``FUSIONREC_LOADTEST_DATA`` — a dataset directory (``interactions.csv`` and ``items.csv``,
  as written by ``fusionrec data movielens-100k``); required.
* ``FUSIONREC_LOADTEST_USER_RPS`` — when set, each simulated user sends at this constant
  rate (``constant_throughput``), so the total rate is users × this; else users wait
  50–150 ms between requests.
* ``FUSIONREC_LOADTEST_RAW`` — when set, one CSV line per request
  (``t_unix,name,latency_ms,ok,status``) is appended to this file; ``loadtest/run.py`` and
  ``bench/soak.py`` compute percentiles over time from it.
* ``FUSIONREC_LOADTEST_API_KEY`` — sent as ``X-API-Key`` when the server requires keys.

A response counts as a failure when its status is not 200 (a 404 for an unknown item id
from the dataset would be a failure too: the ids come from the bundle's own data).
"""

from __future__ import annotations

import csv
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import HttpUser, between, constant_throughput, events, task

HISTORY_MIN, HISTORY_MAX = 5, 50


@dataclass(frozen=True)
class MixData:
    """What the mix draws from: per-user item sequences, item ids, titles and genres."""

    users: dict[str, list[str]]
    user_ids: list[str]
    item_ids: list[str]
    titles: list[str]
    genres: list[str]


def load_mix_data(data_dir: Path) -> MixData:
    """Read a dataset directory's interactions.csv and items.csv (stdlib only)."""
    rows: list[tuple[str, float, int, str]] = []
    with (data_dir / "interactions.csv").open(newline="") as fh:
        for n, rec in enumerate(csv.DictReader(fh)):
            ts = rec.get("timestamp") or "0"
            try:
                t = float(ts)
            except ValueError:
                t = float(n)
            rows.append((rec["user_id"], t, n, rec["item_id"]))
    rows.sort()
    users: dict[str, list[str]] = {}
    for user, _, _, item in rows:
        users.setdefault(user, []).append(item)
    item_ids: list[str] = []
    titles: list[str] = []
    genres: set[str] = set()
    with (data_dir / "items.csv").open(newline="") as fh:
        for rec in csv.DictReader(fh):
            item_ids.append(rec["item_id"])
            title = (rec.get("title") or "").strip()
            if title:
                titles.append(title)
            for g in (rec.get("genres") or "").split("|"):
                if g.strip() and g.strip() != "unknown":
                    genres.add(g.strip())
    if not users or not item_ids:
        raise SystemExit(f"{data_dir}: no interactions or no items to build the load mix from")
    return MixData(
        users=users,
        user_ids=sorted(users),
        item_ids=item_ids,
        titles=titles or item_ids,
        genres=sorted(genres) or ["drama"],
    )


def recommend_body(data: MixData, rng: random.Random) -> dict[str, Any]:
    user = rng.choice(data.user_ids)
    seq = data.users[user]
    if rng.random() < 0.2:  # a known shopper: the server-side history
        return {"user_id": user, "k": 10}
    n = rng.randint(min(HISTORY_MIN, len(seq)), min(HISTORY_MAX, len(seq)))
    end = rng.randint(n, len(seq))
    return {"history": seq[end - n : end], "k": 10}


def search_body(data: MixData, rng: random.Random) -> dict[str, Any]:
    kind = rng.random()
    if kind < 0.4:  # a title, the year dropped: "Toy Story"
        query = rng.choice(data.titles).rsplit(" (", 1)[0]
    elif kind < 0.7:
        query = " ".join(rng.sample(data.genres, k=min(2, len(data.genres)))).lower()
    else:
        query = f"{rng.choice(data.genres).lower()} like {rng.choice(data.titles)}"
    body: dict[str, Any] = {"query": query[:512], "k": 10}
    if rng.random() < 0.5:
        body["user_id"] = rng.choice(data.user_ids)
    return body


def event_body(data: MixData, rng: random.Random) -> dict[str, Any]:
    # shoppers "loadtest-N": their histories grow in the server's store, not the dataset's users
    return {
        "user_id": f"loadtest-{rng.randrange(5000)}",
        "item_id": rng.choice(data.item_ids),
        "timestamp": time.time(),
    }


class RawLog:
    """One CSV line per request, appended from locust's request event (thread-safe)."""

    def __init__(self, path: str) -> None:
        self._fh = open(path, "a", buffering=1 << 16)  # noqa: SIM115 - closed on quit
        self._lock = threading.Lock()

    def write(self, name: str, latency_ms: float, ok: bool, status: int) -> None:
        with self._lock:
            self._fh.write(f"{time.time():.3f},{name},{latency_ms:.3f},{int(ok)},{status}\n")

    def close(self) -> None:
        with self._lock:
            self._fh.close()


_DATA: MixData | None = None
_RAW: RawLog | None = None


def _data() -> MixData:
    global _DATA
    if _DATA is None:
        source = os.environ.get("FUSIONREC_LOADTEST_DATA")
        if not source:
            raise SystemExit(
                "set FUSIONREC_LOADTEST_DATA to a dataset directory "
                "(fusionrec data movielens-100k --out DIR)"
            )
        _DATA = load_mix_data(Path(source))
    return _DATA


@events.init.add_listener
def _on_init(**_: Any) -> None:
    global _RAW
    _data()  # fail at start, not in the first request
    raw = os.environ.get("FUSIONREC_LOADTEST_RAW")
    if raw:
        _RAW = RawLog(raw)


@events.request.add_listener
def _on_request(
    name: str, response_time: float, exception: BaseException | None, response: Any = None, **_: Any
) -> None:
    if _RAW is not None:
        status = int(getattr(response, "status_code", 0) or 0)
        _RAW.write(name, response_time, exception is None, status)


@events.quitting.add_listener
def _on_quit(**_: Any) -> None:
    if _RAW is not None:
        _RAW.close()


def _wait() -> Any:
    rps = os.environ.get("FUSIONREC_LOADTEST_USER_RPS")
    return constant_throughput(float(rps)) if rps else between(0.05, 0.15)


class Shopper(HttpUser):
    """One frontend session; task weights are the request mix."""

    wait_time = _wait()

    def on_start(self) -> None:
        self.rng = random.Random()
        self.data = _data()
        key = os.environ.get("FUSIONREC_LOADTEST_API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    def _post(self, path: str, body: dict[str, Any]) -> None:
        with self.client.post(path, json=body, name=path, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(70)
    def recommend(self) -> None:
        self._post("/v1/recommend", recommend_body(self.data, self.rng))

    @task(15)
    def search(self) -> None:
        self._post("/v1/search", search_body(self.data, self.rng))

    @task(10)
    def event(self) -> None:
        self._post("/v1/events", event_body(self.data, self.rng))

    @task(5)
    def item(self) -> None:
        item = self.rng.choice(self.data.item_ids)
        with self.client.get(
            f"/v1/items/{item}", name="/v1/items/{item_id}", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
