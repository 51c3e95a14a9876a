"""The fusion head: its examples, and its cross-fitted training on the validation items."""

from __future__ import annotations

import numpy as np
import torch

from model_store.config import Config, ModelConfig
from model_store.model.fused import FusedModel
from model_store.model.scoring import EvalSet, rank_targets
from model_store.training.head import fit_head, head_examples, keep_head

N_ITEMS = 12


def tiny_model(log_pop: torch.Tensor | None = None) -> FusedModel:
    """An untrained joint model: its retrieval order is arbitrary."""
    torch.manual_seed(0)
    cfg = ModelConfig(fusion="joint", dim=16, max_len=8, n_layers=1, n_heads=2)
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, 8), dim=-1)
    text[0] = 0
    pop = torch.zeros(N_ITEMS + 1) if log_pop is None else log_pop
    return FusedModel(cfg, text, torch.ones(N_ITEMS + 1, dtype=torch.bool), pop).eval()


def config(model: FusedModel, *, epochs: int, lr: float = 3e-3) -> Config:
    cfg = Config()
    cfg.model = model.cfg
    cfg.model.rerank_candidates = N_ITEMS
    cfg.train.rerank_epochs, cfg.train.rerank_lr = epochs, lr
    return cfg


def test_head_examples_label_the_target_among_the_candidates() -> None:
    model = tiny_model()
    data = EvalSet([[1, 2], [3], [4, 5, 6]], [3, 4, 1])
    ex = head_examples(model, data, n_cand=5)
    for row, (hist, target) in enumerate(zip(data.histories, data.targets, strict=True)):
        cand = ex.cand[row].tolist()
        assert not set(cand) & set(hist)  # the history is excluded, as in evaluation
        assert ex.label[row] == (cand.index(target) if target in cand else -1)


def test_cross_fitted_head_learns_a_signal_the_retriever_lacks_and_is_kept() -> None:
    """Every target is the most popular item the user has not had; an untrained retriever
    ranks it at random, the popularity feature gives it away."""
    pop = torch.log1p(torch.arange(N_ITEMS + 1, dtype=torch.float32) * 10)
    model = tiny_model(pop)
    rng = np.random.default_rng(1)
    hists = [rng.choice(np.arange(1, N_ITEMS + 1), 3, replace=False).tolist() for _ in range(200)]
    targets = [max(set(range(1, N_ITEMS + 1)) - set(h)) for h in hists]
    data = EvalSet(hists, targets)
    before = rank_targets(model, data, use_head=False)[0]
    report = fit_head(model, config(model, epochs=20, lr=1e-2), data)
    assert report.info.examples == 200  # every target is among all the candidates
    # out of fold: each half is scored by the head trained on the other half
    assert report.info.valid_ndcg10_with_head > report.info.valid_ndcg10_retrieval + 0.2
    assert report.info.enabled and model.use_head
    assert report.info.valid_ndcg10_gain_lo is not None and report.info.valid_ndcg10_gain_lo > 0
    # the serving cost is measured and recorded (not asserted: speed lives in the bench)
    assert report.info.cost_us_batch1 is not None and report.info.cost_us_batch1 > 0
    assert report.info.cost_us_batch32 is not None and report.info.cost_us_batch32 > 0
    assert report.valid_with_head["coverage@10"] > 0
    after = rank_targets(model, data)[0]
    assert (after == 0).mean() > 0.6 > 0.3 > (before == 0).mean()


def test_a_head_without_signal_is_not_kept_and_left_a_no_op() -> None:
    model = tiny_model()  # no feature tells these random targets apart
    rng = np.random.default_rng(2)
    hists = [rng.choice(np.arange(1, N_ITEMS + 1), 3, replace=False).tolist() for _ in range(60)]
    targets = [int(rng.choice(sorted(set(range(1, N_ITEMS + 1)) - set(h)))) for h in hists]
    data = EvalSet(hists, targets)
    before = rank_targets(model, data, use_head=False)[0]
    report = fit_head(model, config(model, epochs=3), data)
    info = report.info
    assert info.valid_ndcg10_gain_lo is not None and info.valid_ndcg10_gain_hi is not None
    assert info.valid_ndcg10_gain_lo <= info.valid_ndcg10_gain <= info.valid_ndcg10_gain_hi
    assert info.enabled == (info.valid_ndcg10_gain_lo > 0)
    assert model.use_head == report.info.enabled
    if not report.info.enabled:
        last = model.head.mlp[-1]
        assert float(last.weight.detach().abs().sum()) == 0.0  # type: ignore[arg-type]
        assert (rank_targets(model, data)[0] == before).all()


def test_too_few_validation_users_train_no_head() -> None:
    model = tiny_model()
    report = fit_head(model, config(model, epochs=3), EvalSet([[1]] * 5, [2] * 5))
    assert not report.info.enabled and not model.use_head
    assert "fewer than 20" in report.info.reason


def test_keep_rule_refuses_a_gain_whose_interval_includes_zero() -> None:
    """Synthetic per-user NDCG@10: a positive mean gain inside the noise is refused (the
    manifest's case: +0.0006 over 943 users), a clear one is kept, a loss is refused."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 943) * (rng.uniform(size=943) < 0.25)
    noise = rng.normal(0.0, 0.05, 943)
    noisy = base + (noise - noise.mean()) + 0.0006  # mean gain exactly +0.0006
    kept, gain = keep_head(noisy, base)
    assert gain.mean > 0 and gain.lo < 0 < gain.hi
    assert not kept
    kept, gain = keep_head(base + (noise - noise.mean()) + 0.02, base)
    assert kept and gain.lo > 0
    kept, gain = keep_head(base - 0.01, base)
    assert not kept and gain.hi < 0
