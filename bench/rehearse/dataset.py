"""The data a rehearsal replays: each user's newest interactions are held out and replayed by
shoppers; everything before them is the history the store is trained on and the event log
is imported from (``fusionrec events import``).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from model_store.data.dataset import read_table


@dataclass
class Replay:
    """What the shoppers replay and the catalog they search."""

    sequences: dict[str, list[str]]  # user id -> held-out item ids, oldest first
    titles: dict[str, str]  # item id -> title (searches, typos)
    genres: list[str]  # genre names seen in the catalog (admin upserts)
    filters: list[dict[str, dict[str, object]]]  # filters a shopper may use on this catalog
    text_columns: list[str]  # the items file's text columns (admin upserts)
    history_dir: Path  # the dataset without the held-out interactions
    history_rows: int


def _text_columns(items: pd.DataFrame) -> list[str]:
    return [c for c in items.columns if c != "item_id" and items[c].dtype == object]


def split(data: Path, work: Path, *, tail: int) -> Replay:
    """Hold out each user's ``tail`` newest interactions (users with more than ``2 * tail``)
    and write the rest, with the items file, to ``work/history``."""
    inter, _ = read_table(data / "interactions")
    items, _ = read_table(data / "items")
    inter = inter.assign(_row=range(len(inter)))
    inter = inter.sort_values(["user_id", "timestamp", "_row"], kind="mergesort")
    pos = inter.groupby("user_id").cumcount(ascending=False)
    size = inter.groupby("user_id")["item_id"].transform("size")
    held = (pos < tail) & (size > 2 * tail)
    sequences = {
        str(u): [str(i) for i in g["item_id"]]
        for u, g in inter[held].groupby("user_id", sort=False)
    }
    out = work / "history"
    out.mkdir(parents=True, exist_ok=True)
    history = inter[~held].drop(columns="_row")
    history.to_csv(out / "interactions.csv", index=False)
    items.to_csv(out / "items.csv", index=False)
    titles = dict(
        zip(
            items["item_id"].astype(str),
            items.get("title", items["item_id"]).astype(str),
            strict=True,
        )
    )
    genres: set[str] = set()
    if "genres" in items:
        for g in items["genres"].dropna().astype(str):
            genres.update(p for p in g.split("|") if p and p != "unknown")
    return Replay(
        sequences=sequences,
        titles=titles,
        genres=sorted(genres),
        filters=filters_for(items, sorted(genres)),
        text_columns=_text_columns(items),
        history_dir=out,
        history_rows=len(history),
    )


def filters_for(items: pd.DataFrame, genres: list[str]) -> list[dict[str, dict[str, object]]]:
    """Filters that hold for some items of this catalog: a genre, a year, a category."""
    out: list[dict[str, dict[str, object]]] = [{"available": {"eq": True}}]
    out += [{"genres": {"contains": g}} for g in genres[:12]]
    if "year" in items:
        out += [{"year": {"gte": y}} for y in (1970, 1990, 1995)]
    if "category" in items:
        cats = items["category"].dropna().astype(str).value_counts().index[:8]
        out += [{"category": {"eq": c}} for c in cats]
    return out


def typo(text: str, rng: random.Random) -> str:
    """One typo in the longest word of ``text``: a dropped, doubled or replaced letter."""
    words = text.split()
    if not words:
        return text
    k = max(range(len(words)), key=lambda i: len(words[i]))
    w = words[k]
    if len(w) < 4:
        return text
    i = rng.randrange(1, len(w) - 1)
    kind = rng.choice(("drop", "double", "replace"))
    if kind == "drop":
        w = w[:i] + w[i + 1 :]
    elif kind == "double":
        w = w[:i] + w[i] + w[i:]
    else:
        w = w[:i] + rng.choice(string.ascii_lowercase) + w[i + 1 :]
    words[k] = w
    return " ".join(words)


def search_query(title: str, rng: random.Random) -> str:
    """A shopper's query for a title: its words without the year, sometimes with a typo."""
    words = [w for w in title.split() if not (w.startswith("(") and w.endswith(")"))]
    query = " ".join(words[:4]) or title
    return typo(query, rng) if rng.random() < 0.5 else query
