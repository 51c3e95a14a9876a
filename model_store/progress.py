"""Progress of long jobs (text encoding, epochs, catalog encoding) as plain log lines.

On a terminal the commands draw rich progress bars; written to a pipe or a file (a
container log, ``make run > log``) those render nothing until the end, so a job looks hung.
There the commands print one plain line per epoch (``EpochRow.log_line``) and a few per
encoding stage instead, flushed at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# a stage prints a line at every tenth of its total and at least every this many seconds
STAGE_EVERY_S = 30.0


def emit(line: str, stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stderr, flush=True)


def stage_lines(
    label: str, total: int | None = None, *, stream: TextIO | None = None
) -> Callable[[int, int | None], None]:
    """``advance(n, total)`` for a stage of ``total`` items (None: not known yet): prints
    ``label: done/total items (pct), rate items/s, elapsed`` now and then and at the end."""
    t0 = time.perf_counter()
    state = {"done": 0, "tenth": 0, "last": t0}
    known = [total]

    def advance(n: int, new_total: int | None = None) -> None:
        if new_total is not None:
            known[0] = new_total
        state["done"] += n
        now = time.perf_counter()
        done, tot = state["done"], known[0]
        tenth = int(10 * done / tot) if tot else 0
        finished = tot is not None and done >= tot
        if not finished and tenth <= state["tenth"] and now - state["last"] < STAGE_EVERY_S:
            return
        state["tenth"], state["last"] = tenth, now
        elapsed = now - t0
        rate = done / elapsed if elapsed > 0 else 0.0
        of = f"/{tot:,}" if tot else ""
        pct = f" ({100 * done / tot:.0f}%)" if tot else ""
        eta = ""
        if tot and not finished and rate > 0:
            eta = f", ETA {(tot - done) / rate:.0f} s"
        emit(f"{label}: {done:,}{of} items{pct}, {rate:,.0f} items/s, {elapsed:.1f} s{eta}", stream)

    return advance
