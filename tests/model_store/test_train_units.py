"""Training building blocks: history windows, the seen-item mask, the softmax losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_store.config import Config
from model_store.data.dataset import load_dataset
from model_store.model.fused import FusedModel
from model_store.training.losses import pairs, rs_loss, seen_items
from model_store.training.optim import batch_size_for
from model_store.training.prepare import Batch, prepare, windows, with_earlier
from model_store.training.trainer import fit


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


def test_seen_pairs_are_causal_and_spare_the_target() -> None:
    inputs = torch.tensor([[0, 3, 1, 2]])
    targets = torch.tensor([[0, 1, 2, 3]])  # target 3 re-consumed at the last position
    batch = Batch(inputs, targets, torch.ones(1, 4))
    mask = targets > 0
    rows, cols = pairs(seen_items(batch, mask, targets[mask]))
    seen = torch.zeros(3, 4, dtype=torch.bool)
    seen[rows, cols] = True
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
    model = FusedModel(
        cfg.model, torch.randn(n + 1, 8), torch.ones(n + 1, dtype=torch.bool), torch.zeros(n + 1)
    )
    inputs = torch.randint(1, n + 1, (4, 6))
    batch = Batch(inputs, torch.randint(1, n + 1, (4, 6)), torch.ones(4, 6))
    full = rs_loss(model, batch, cfg, None)
    logq = torch.full((n + 1,), float(np.log(0.5)))
    sampled = rs_loss(model, batch, cfg, logq)
    assert torch.isfinite(full) and torch.isfinite(sampled)
    sampled.backward()
    assert model.items.id_emb.weight.grad is not None


def test_late_fusion_trains_its_id_retriever_on_both_softmax_paths() -> None:
    # late serves [ID vector, raw text embedding]; only the ID part is trained, and its loss
    # is the id model's with the same weights (it crashed on the shape mismatch before)
    torch.manual_seed(0)
    n = 40
    text, pop = torch.randn(n + 1, 8), torch.zeros(n + 1)
    has_id = torch.ones(n + 1, dtype=torch.bool)
    losses = {}
    for fusion in ("id", "late"):
        cfg = Config()
        cfg.model.dim, cfg.model.max_len, cfg.train.num_negatives = 16, 6, 10
        cfg.model.fusion = fusion  # type: ignore[assignment]
        torch.manual_seed(1)
        model = FusedModel(cfg.model, text, has_id, pop)
        model.train(False)  # no dropout: the two losses are comparable
        torch.manual_seed(2)
        inputs = torch.randint(1, n + 1, (3, 6))
        batch = Batch(inputs, torch.randint(1, n + 1, (3, 6)), torch.ones(3, 6))
        logq = torch.full((n + 1,), float(np.log(0.5)))
        torch.manual_seed(3)
        losses[fusion] = (rs_loss(model, batch, cfg, None), rs_loss(model, batch, cfg, logq))
        sum(losses[fusion]).backward()
        assert model.items.id_emb.weight.grad is not None
    assert torch.allclose(losses["late"][0], losses["id"][0])
    assert torch.allclose(losses["late"][1], losses["id"][1])


def test_windows_carry_the_items_further_ahead_for_the_multi_target_loss() -> None:
    seq = np.arange(1, 13)
    b = windows([seq], [np.ones(12, np.float32)], 4, future=3)
    assert b.future is not None and b.future.shape == (len(b.inputs), 4, 2)
    for x, f in zip(b.inputs, b.future, strict=True):
        for a, ahead in zip(x.tolist(), f.tolist(), strict=True):
            if a > 0:  # items 2 and 3 steps ahead, 0 past the end of the sequence
                assert ahead == [a + 2 if a + 2 <= 12 else 0, a + 3 if a + 3 <= 12 else 0]
    assert windows([seq], [np.ones(12, np.float32)], 4).future is None


def test_multi_target_loss_reduces_to_next_item_loss_and_rewards_the_future() -> None:
    torch.manual_seed(0)
    n = 30
    cfg = Config()
    cfg.model.dim, cfg.model.max_len, cfg.model.fusion = 16, 6, "id"
    model = FusedModel(
        cfg.model, torch.randn(n + 1, 8), torch.ones(n + 1, dtype=torch.bool), torch.zeros(n + 1)
    )
    model.eval()
    seqs = [np.random.default_rng(s).permutation(n)[:10] + 1 for s in range(3)]
    ones = [np.ones(10, np.float32) for _ in seqs]
    plain = windows(seqs, ones, 6)
    multi = windows(seqs, ones, 6, future=3)
    base = rs_loss(model, plain, cfg, None)
    cfg.train.future_weight = 0.0
    assert torch.allclose(rs_loss(model, multi, cfg, None), base)
    cfg.train.future_weight = 0.5
    with_future = rs_loss(model, multi, cfg, None)
    assert torch.isfinite(with_future) and not torch.allclose(with_future, base)


def test_multi_target_loss_is_the_soft_target_cross_entropy() -> None:
    """The gathered form equals −Σ soft·log_softmax over the masked logits, written out."""
    torch.manual_seed(0)
    n = 25
    cfg = Config()
    cfg.model.dim, cfg.model.max_len, cfg.model.fusion = 16, 5, "id"
    model = FusedModel(
        cfg.model, torch.randn(n + 1, 8), torch.ones(n + 1, dtype=torch.bool), torch.zeros(n + 1)
    )
    model.eval()
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, n + 1, size=12) for _ in range(4)]  # repeats on purpose
    ws = [rng.random(12).astype(np.float32) + 0.5 for _ in seqs]
    # the user's items before each window are masked too (evaluation excludes them all)
    batch = with_earlier(windows(seqs, ws, 5, future=4), seqs)
    # the latest window holds items 6..10 as inputs: 6 come before it
    assert batch.earlier is not None and batch.earlier.shape[1] == 6
    got = rs_loss(model, batch, cfg, None)

    mask = batch.targets > 0
    h = model.sequence_states(batch.inputs)[mask]
    logits = h @ model.item_vectors().T
    y, w = batch.targets[mask], batch.weights[mask]
    assert batch.future is not None
    fut = batch.future[mask]
    rows_b, cols_t = torch.nonzero(mask, as_tuple=True)
    soft = torch.zeros_like(logits)
    for r in range(len(y)):
        b = int(rows_b[r])
        owner, start = int(batch.owner[b]), int(batch.start[b])  # type: ignore[index]
        window = {int(i) for i in batch.inputs[b, : cols_t[r] + 1] if i > 0}
        seen = (window | {int(i) for i in seqs[owner][:start]}) - {int(y[r])}
        for i in seen:
            logits[r, i - 1] = -1e9
        soft[r, y[r] - 1] += w[r]
        for j in range(fut.shape[1]):
            f = int(fut[r, j])
            if f > 0 and f not in seen:
                wj = cfg.train.future_weight * cfg.train.future_decay**j
                soft[r, f - 1] += w[r] * wj
    want = -(soft * logits.log_softmax(-1)).sum() / soft.sum()
    assert torch.allclose(got, want, rtol=1e-5)


def test_windows_know_their_sequence_and_start_and_the_items_before_them() -> None:
    seqs = [np.arange(1, 13), np.arange(20, 23)]
    b = with_earlier(windows(seqs, [np.ones(len(s), np.float32) for s in seqs], 4), seqs)
    assert b.owner is not None and b.start is not None and b.earlier is not None
    for x, owner, start, before in zip(b.inputs, b.owner, b.start, b.earlier, strict=True):
        seq = seqs[int(owner)]
        kept = [int(i) for i in x if i > 0]
        assert kept == seq[int(start) : int(start) + len(kept)].tolist()
        assert [int(i) for i in before if i > 0] == seq[: int(start)].tolist()
    # a batch of windows that all start at 0 still has one (empty) column
    first = b.take(b.start == 0)
    assert with_earlier(first, seqs).earlier.tolist() == [[0]] * len(first.inputs)  # type: ignore[union-attr]


def test_auto_batch_size_keeps_enough_steps_per_epoch() -> None:
    assert batch_size_for(64, 10) == 64  # an explicit size is kept
    assert batch_size_for(0, 100) == 16  # tiny data: the smallest batch
    assert batch_size_for(0, 2_412) == 16  # MovieLens-100k windows
    assert batch_size_for(0, 128 * 32) == 32  # exactly 128 steps of 32
    assert batch_size_for(0, 128 * 32 - 1) == 16
    assert batch_size_for(0, 1_000_000) == 128  # large data keep big batches
    assert batch_size_for(0, 100, lm_in_loop=True) == 128  # lora: the LM forward dominates


def test_best_epoch_is_chosen_on_the_validation_score_averaged_with_its_neighbours(
    tiny_dataset: Path,
) -> None:
    prep = prepare(load_dataset(tiny_dataset), holdout=True)
    prep.text_emb = np.random.default_rng(0).normal(size=(prep.n_items, 8)).astype(np.float32)
    for window in (1, 3):
        cfg = Config()
        cfg.model.fusion, cfg.model.dim, cfg.model.max_len = "id", 16, 10
        cfg.train.epochs, cfg.train.patience, cfg.train.rerank = 6, 100, False
        cfg.train.select_window = window
        result = fit(cfg, prep)
        v = [row.valid["ndcg@10"] for row in result.history]
        smoothed = [
            float(np.mean(v[max(0, e - window // 2) : e + window // 2 + 1])) for e in range(len(v))
        ]
        assert len(result.history) == 6
        assert result.best_epoch == int(np.argmax(smoothed)) + 1, (v, result.best_epoch)
        # the metrics reported are the chosen epoch's own
        assert result.valid_metrics["ndcg@10"] == v[result.best_epoch - 1]


def test_items_without_training_interactions_are_left_out_of_the_softmax() -> None:
    """An untrained item (no ID, text path only) is never a target; as a negative it would
    teach the text tower to bury every new item. Its text must not move the loss, on the
    full and the sampled softmax alike, while a trained item's text does."""
    torch.manual_seed(0)
    n = 30
    cfg = Config()
    cfg.model.dim, cfg.model.max_len, cfg.train.num_negatives = 16, 6, 64
    has_id = torch.ones(n + 1, dtype=torch.bool)
    has_id[7] = False  # item 7 has no training interaction
    text = torch.nn.functional.normalize(torch.randn(n + 1, 8), dim=-1)
    model = FusedModel(cfg.model, text, has_id, torch.zeros(n + 1)).train(False)
    trained = torch.tensor([i for i in range(1, n + 1) if i != 7])
    inputs = trained[torch.randint(0, n - 1, (4, 6))]
    batch = Batch(inputs, trained[torch.randint(0, n - 1, (4, 6))], torch.ones(4, 6))
    logq = torch.full((n + 1,), float(np.log(0.5)))

    def losses() -> tuple[float, float]:
        torch.manual_seed(3)  # the same sampled negatives each time
        with torch.no_grad():
            return float(rs_loss(model, batch, cfg, None)), float(rs_loss(model, batch, cfg, logq))

    before = losses()
    model.text_emb[7] = -model.text_emb[7] * 5
    assert losses() == pytest.approx(before, abs=1e-6)
    model.text_emb[trained[0]] = -model.text_emb[trained[0]] * 5
    after = losses()
    assert after[0] != pytest.approx(before[0], abs=1e-4)


def test_the_weight_average_of_a_warm_start_moves_at_its_full_decay_from_the_first_step() -> None:
    """From random weights the average warms up (it follows the first steps closely); from
    trained ones (a warm start) it starts at its decay, so the first steps of a fresh
    optimizer cannot drag the trained weights away."""
    from model_store.training.optim import WeightAverage

    p = torch.nn.Parameter(torch.zeros(3))
    cold, warm = WeightAverage([p], 0.99), WeightAverage([p], 0.99, warm=True)
    with torch.no_grad():
        p.add_(1.0)
    cold.update()
    warm.update()
    assert torch.allclose(warm.values[0], torch.full((3,), 0.01))
    assert float(cold.values[0][0]) > 0.5
