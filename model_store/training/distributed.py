"""torch.distributed for training: the process group torchrun describes, and what the
trainer needs of it.

``torchrun --nproc-per-node N -m fusionrec train ...`` (or ``fusionrec train --nproc N``,
which starts torchrun) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables; :func:`init` joins the group: NCCL when the training runs on CUDA (each rank on
the GPU ``LOCAL_RANK``), gloo on the CPU. Without those variables nothing is initialised
and every helper here is the single-process identity, so one process runs exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from model_store.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} must be an integer (set by torchrun)") from exc


def from_env() -> Ranks:
    """The ranks torchrun put in the environment (rank 0 of 1 when it did not)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world} do not describe a job")
    return Ranks(rank, world, _env_int("LOCAL_RANK", 0))


def current() -> Ranks:
    """The ranks of the initialised group, or rank 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return Ranks()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


TIMEOUT_ENV = "FUSIONREC_DIST_TIMEOUT_S"


def timeout_seconds() -> float:
    """How long a rank waits for the others at a collective (``FUSIONREC_DIST_TIMEOUT_S``,
    default 3 h: the other ranks wait while rank 0 encodes the catalog texts once)."""
    raw = os.environ.get(TIMEOUT_ENV, "10800")
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds") from exc
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be > 0")
    return value


def init(device_setting: str) -> Ranks:
    """Join the process group torchrun describes (no-op for one process); returns the ranks.

    ``device_setting`` is ``train.device``: with CUDA the rank's GPU is ``LOCAL_RANK`` and
    the backend NCCL, else gloo."""
    ranks = from_env()
    if not ranks.distributed or dist.is_initialized():
        return current() if ranks.distributed else ranks
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(ranks.local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds()))
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def broadcast(value: T, src: int = 0) -> T:
    """``value`` of rank ``src`` on every rank (any picklable object)."""
    if not current().distributed:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=src)
    return cast(T, box[0])


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (the same dict on every rank)."""
    if not current().distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    t /= current().world
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def _device() -> torch.device:
    """Where collectives' tensors live: the rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_equal(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds the same values on every rank."""
    if not current().distributed:
        return True
    ref = tensor.detach().clone()
    dist.broadcast(ref, src=0)
    same = torch.tensor([int(torch.equal(ref, tensor.detach()))], device=tensor.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())
