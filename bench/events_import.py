"""``fusionrec events import`` speed into SQLite: a synthetic dataset of N interactions
imported into an empty log, then again (idempotent: nothing new). Prints a table.

    python bench/events_import.py --rows 500000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from model_store.events.importer import import_dataset
from model_store.events.log import EventStore
from model_store.privacy.keys import user_hash


def write_dataset(out: Path, rows: int, users: int, items: int) -> None:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    pd.DataFrame({"item_id": [f"i{k}" for k in range(items)], "title": "t"}).to_csv(
        out / "items.csv", index=False
    )
    pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, users, rows)],
            "item_id": [f"i{k}" for k in rng.integers(0, items, rows)],
            "timestamp": 1.7e9 + np.arange(rows) * 0.5,
        }
    ).to_csv(out / "interactions.csv", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=2_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, args.rows, args.users, args.items)
        log = EventStore(f"sqlite:///{tmp}/events.db")
        print("| import | rows | new | seconds | events/s |\n|---|---:|---:|---:|---:|")
        for name in ("first (empty log)", "again (idempotent)"):
            t0 = time.perf_counter()
            done = import_dataset(log, data, lambda u: user_hash(u, b"k" * 32))
            s = time.perf_counter() - t0
            print(f"| {name} | {done.rows} | {done.new} | {s:.1f} | {done.rows / s:,.0f} |")
        log.close()


if __name__ == "__main__":
    main()
