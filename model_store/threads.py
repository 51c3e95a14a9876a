"""Intra-op threads of a training or indexing process.

Each process takes the cores it may run on (``os.sched_getaffinity``) divided by the
processes started on this machine (``LOCAL_WORLD_SIZE``, which torchrun sets): two ranks
on two cores then run one thread each instead of four threads fighting over two cores
(with small batches the threads of oversubscribed processes mostly wait for each other,
docs/BENCHMARKS.md). ``--threads`` or ``FUSIONREC_THREADS`` override it.
"""

from __future__ import annotations

import os

import torch

from model_store.errors import ConfigError

ENV = "FUSIONREC_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_processes() -> int:
    """How many processes of this job run on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError as exc:
        raise ConfigError(f"LOCAL_WORLD_SIZE={raw!r} must be an integer") from exc
    return max(1, n)


def default_threads() -> int:
    return max(1, usable_cores() // local_processes())


def resolve_threads(requested: int | None) -> int:
    """``requested``, else ``FUSIONREC_THREADS``, else :func:`default_threads`."""
    if requested is None:
        env = os.environ.get(ENV, "").strip()
        if not env:
            return default_threads()
        try:
            requested = int(env)
        except ValueError as exc:
            raise ConfigError(f"{ENV}={env!r} must be an integer >= 1") from exc
        if requested < 1:
            raise ConfigError(f"{ENV}={env!r} must be an integer >= 1")
    if requested < 1:
        raise ConfigError(f"--threads={requested} must be >= 1")
    return requested


def set_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads (see the module doc); returns the count set."""
    n = resolve_threads(requested)
    torch.set_num_threads(n)
    return n
