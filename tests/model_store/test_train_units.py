"""Training building blocks: history windows, the seen-item mask, the sampled softmax."""

from __future__ import annotations

import numpy as np
import torch

from model_store.config import Config
from model_store.model import Batch, FusedModel
from model_store.train import rs_loss, seen_mask, windows


def test_windows_cover_every_target_and_keep_the_latest_context() -> None:
    seq = np.arange(1, 13)
    b = windows([seq], [np.ones(12, np.float32)], 4)
    targets = sorted(int(t) for t in b.targets.flatten() if t > 0)
    assert targets == list(range(2, 13))  # every next item exactly once
    assert b.inputs[0].tolist() == [8, 9, 10, 11] and b.targets[0].tolist() == [9, 10, 11, 12]
    jittered = windows([seq], [np.ones(12, np.float32)], 4, np.random.default_rng(1))
    covered = {int(t) for t in jittered.targets.flatten() if t > 0}
    assert covered == set(range(2, 13))
    assert jittered.inputs[0].tolist() == [8, 9, 10, 11]
    # inputs and targets stay aligned: the target is the next item of the sequence
    for x, y in zip(jittered.inputs, jittered.targets, strict=True):
        for a, c in zip(x.tolist(), y.tolist(), strict=True):
            if a > 0:
                assert c == a + 1


def test_seen_mask_is_causal_and_spares_the_target() -> None:
    inputs = torch.tensor([[0, 3, 1, 2]])
    targets = torch.tensor([[0, 1, 2, 3]])  # target 3 re-consumed at the last position
    batch = Batch(inputs, targets, torch.ones(1, 4))
    mask = targets > 0
    seen = seen_mask(batch, mask, targets[mask], n_items=4)
    # rows: positions 1, 2, 3; columns: items 1..4
    assert seen.tolist() == [
        [False, False, True, False],  # saw {3}; target 1
        [True, False, True, False],  # saw {3, 1}; target 2
        [True, True, False, False],  # saw {3, 1, 2}; target 3 itself stays
    ]


def test_sampled_softmax_matches_full_softmax_scale() -> None:
    torch.manual_seed(0)
    n = 50
    cfg = Config()
    cfg.model.dim, cfg.model.max_len, cfg.train.num_negatives = 16, 6, 20
    cfg.model.fusion = "id"
    model = FusedModel(cfg.model, torch.randn(n + 1, 8), torch.ones(n + 1, dtype=torch.bool),
                       torch.zeros(n + 1))
    inputs = torch.randint(1, n + 1, (4, 6))
    batch = Batch(inputs, torch.randint(1, n + 1, (4, 6)), torch.ones(4, 6))
    full = rs_loss(model, batch, cfg, None)
    logq = torch.full((n + 1,), float(np.log(0.5)))
    sampled = rs_loss(model, batch, cfg, logq)
    assert torch.isfinite(full) and torch.isfinite(sampled)
    sampled.backward()
    assert model.items.id_emb.weight.grad is not None
