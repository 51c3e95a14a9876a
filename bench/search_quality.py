"""Search quality on MovieLens-100k, dense and hybrid side by side, through the real app.

    python bench/search_quality.py --store /tmp/mlstore --data /tmp/ml [--out result.json]

For every movie: the query "<title without the year>" must return it at rank 1; the same
query with one typo per word of 4+ letters (two inner letters swapped, the rest kept) must
return it in the top 5; for every genre, "<genre> movies" scores precision@10 (results
whose genres contain it). Also: how many results the nonsense query "zzzzqqqq" gets, and
whether three pages of 5 equal one page of 15. Anonymous queries (no user), ``k`` = 10.
If the store has no bundle, one is trained on MovieLens-100k first (2 epochs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model_store.bundle import store as store_mod

YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def ensure_bundle(store: Path, data: Path) -> None:
    if (store / "CURRENT").exists():
        return
    if not (data / "interactions.csv").exists():
        subprocess.run(["fusionrec", "data", "movielens-100k", "--out", str(data)], check=True)
    subprocess.run(
        ["fusionrec", "train", "--data", str(data), "--store", str(store), "--epochs", "2"],
        check=True,
    )


def typo(query: str) -> str:
    """Two inner letters swapped in every word of 4+ letters (``wars`` → ``wras``)."""

    def swap(w: str) -> str:
        if len(w) < 4 or not w.isalpha():
            return w
        i = len(w) // 2 - 1
        return w[:i] + w[i + 1] + w[i] + w[i + 2 :]

    return " ".join(swap(w) for w in query.split())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("/tmp/mlstore"))
    p.add_argument("--data", type=Path, default=Path("/tmp/ml"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    ensure_bundle(args.store, args.data)
    items = pd.read_parquet(args.store / store_mod.current_version(args.store) / "items.parquet")
    items["item_id"] = items["item_id"].astype(str)
    settings = Settings(store=args.store, device="cpu", rate_limit_rps=0)
    genres = sorted({g for gs in items["genres"] for g in str(gs).split("|") if g})
    results: dict[str, Any] = {}
    with TestClient(create_app(settings)) as client:

        def search(query: str, mode: str, k: int = 10, offset: int = 0) -> list[str]:
            body = {"query": query[:512], "k": k, "mode": mode, "offset": offset}
            r = client.post("/v1/search", json=body)
            r.raise_for_status()
            return [i["item_id"] for i in r.json()["items"]]

        for mode in ("dense", "hybrid"):
            t0 = time.perf_counter()
            exact = typo_hit = n = 0
            for item_id, title in zip(items["item_id"], items["title"], strict=True):
                query = YEAR.sub("", str(title)).strip()
                if not query:
                    continue
                n += 1
                exact += search(query, mode, 5)[:1] == [item_id]
                typo_hit += item_id in search(typo(query), mode, 5)
            gen = {
                g: set(items["item_id"][items["genres"].str.split("|").map(lambda x, g=g: g in x)])
                for g in genres
            }
            precision = {
                g: sum(i in gen[g] for i in search(f"{g} movies", mode, 10)) / 10 for g in genres
            }
            pages = [search("space adventure", mode, 5, o) for o in (0, 5, 10)]
            if mode == "dense":  # dense scores are cosines: where a relevance floor can sit
                top = client.post("/v1/search", json={"query": "zzzzqqqq", "k": 1, "mode": mode})
                results["nonsense_top_cosine"] = top.json()["items"][0]["score"]
                tops = [
                    client.post(
                        "/v1/search", json={"query": f"{g} movies", "k": 10, "mode": mode}
                    ).json()["items"][-1]["score"]
                    for g in genres
                ]
                results["genre_query_10th_cosine_min"] = min(tops)
            results[mode] = {
                "titles": n,
                "exact_title_at_1": round(exact / n, 4),
                "typo_title_in_top5": round(typo_hit / n, 4),
                "genre_precision_at_10": round(sum(precision.values()) / len(precision), 4),
                "genre_precision_by_genre": precision,
                "nonsense_results": len(search("zzzzqqqq", mode, 5)),
                "pages_stable": [i for pg in pages for i in pg]
                == search("space adventure", mode, 15),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(mode, {k: v for k, v in results[mode].items() if k != "genre_precision_by_genre"})
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "store_version": store_mod.current_version(args.store),
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
