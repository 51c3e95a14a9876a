"""Item vectors for the index, through the model's one encode path.

``encode_catalog`` calls ``FusedModel.item_vectors`` (the function the trainer and the
service use) over the catalog in chunks; the LM text embeddings are already cached in the
bundle (``catalog.safetensors``), so no language model runs for a full rebuild.
Items that arrive after training are encoded by ``model_store.catalog.changes.encode_items``.

Under torchrun (``fusionrec index`` started by ``torchrun --nproc-per-node N -m fusionrec
index ...``) each rank encodes its contiguous block of the rows and rank 0 gathers them, in
row order; rank 0 alone then builds the FAISS index and publishes it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from model_store.bundle.io import Bundle
from model_store.errors import ConfigError
from model_store.model.fused import FusedModel, left_pad
from model_store.text.lm import pick_device
from model_store.training import distributed as dist_mod


def _model_device(bundle: Bundle, device: str | None) -> torch.device:
    """``None`` keeps the model where it is (the service's GPU); else move it."""
    if device is None:
        return bundle.model.text_emb.device
    dev = pick_device(device)
    bundle.model.to(dev)
    return dev


def encode_catalog(
    bundle: Bundle,
    *,
    batch_size: int = 8192,
    device: str | None = None,
    rows: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
    shard: bool = True,
) -> np.ndarray:
    """Retrieval vectors of catalog ``rows`` (default all) → (N, D) float32.

    ``device``: "auto"/"cpu"/"cuda" moves the model there; None leaves it where it is.
    In a process group every rank encodes its block of the rows; rank 0 gets all N vectors,
    the other ranks an empty (0, D) array (``shard`` False: this process encodes them all).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    model = bundle.model
    dev = _model_device(bundle, device)
    model.eval()
    idx_all = (
        np.arange(model.n_items, dtype=np.int64)
        if rows is None
        else np.asarray(rows, dtype=np.int64)
    ) + 1
    ranks = dist_mod.current()
    if ranks.distributed and shard:
        blocks = np.array_split(idx_all, ranks.world)
        mine = _encode(model, dev, blocks[ranks.rank], batch_size, progress)
        return _gather_rows(mine, [len(b) for b in blocks], ranks)
    return _encode(model, dev, idx_all, batch_size, progress)


def _encode(
    model: FusedModel,
    dev: torch.device,
    idx_all: np.ndarray,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> np.ndarray:
    out = np.empty((len(idx_all), model.out_dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(idx_all), batch_size):
            idx = torch.from_numpy(idx_all[start : start + batch_size]).to(dev)
            out[start : start + len(idx)] = model.item_vectors(idx).float().cpu().numpy()
            if progress is not None:
                progress(len(idx))
    return out


def _gather_rows(mine: np.ndarray, sizes: list[int], ranks: dist_mod.Ranks) -> np.ndarray:
    """Every rank's block on rank 0, concatenated in rank order (others: an empty array).
    Blocks are padded to the longest (collectives move equal shapes) and cut back."""
    nccl = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    dim, longest = mine.shape[1], max(sizes)
    tensor = torch.zeros((longest, dim), dtype=torch.float32, device=dev)
    tensor[: len(mine)] = torch.from_numpy(mine).to(dev)
    if ranks.main:
        parts = [torch.empty_like(tensor) for _ in sizes]
        dist.gather(tensor, parts, dst=0)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).cpu().numpy()
    dist.gather(tensor, None, dst=0)
    return np.empty((0, dim), dtype=np.float32)


def query_vectors(
    bundle: Bundle, *, max_users: int = 1000, seed: int = 0, device: str | None = None
) -> np.ndarray:
    """Up to ``max_users`` real user vectors from the bundle's training histories (Q, D).

    With no histories: sampled item vectors plus Gaussian noise of the same scale.
    """
    rng = np.random.default_rng(seed)
    index_of = bundle.index_of()
    users = sorted(bundle.histories)
    if len(users) > max_users:
        users = [users[i] for i in np.sort(rng.choice(len(users), max_users, replace=False))]
    hists = [[index_of[i] for i in bundle.histories[u] if i in index_of] for u in users]
    hists = [h for h in hists if h]
    model = bundle.model
    dev = _model_device(bundle, device)
    model.eval()
    if hists:
        out = []
        with torch.inference_mode():
            for start in range(0, len(hists), 256):
                hist = left_pad(hists[start : start + 256], model.cfg.max_len).to(dev)
                out.append(model.user_vectors(hist).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)
    n = model.n_items
    pick = rng.choice(n, size=min(max_users, n), replace=False)
    v = encode_catalog(bundle, rows=pick, device=device, shard=False)
    scale = float(np.std(v)) or 1.0
    return (v + rng.normal(0.0, scale, size=v.shape)).astype(np.float32)
