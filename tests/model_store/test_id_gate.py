"""The ID-trust gate (``model.id_gate``): shapes and range, a neutral start, rare items and
short histories leaning on text, gradients, the config and a bundle round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_store.bundle import io as bundle_mod
from model_store.config import Config, ConfigError, ModelConfig
from model_store.model.fused import FusedModel, left_pad
from model_store.model.item_tower import IdGate


def gated_model(*, gate: bool = True, n: int = 40) -> FusedModel:
    torch.manual_seed(0)
    cfg = ModelConfig(fusion="joint", dim=16, max_len=8, text_weight=0, id_gate=gate)
    text = F.normalize(torch.randn(n + 1, 12), dim=-1)
    text[0] = 0
    log_pop = torch.log1p(torch.arange(n + 1, dtype=torch.float32))  # item k: k - 1 purchases
    return FusedModel(cfg, text, torch.ones(n + 1, dtype=torch.bool), log_pop).eval()


def test_gate_shapes_and_range() -> None:
    gate = IdGate()
    with torch.no_grad():
        gate.item_ab.copy_(torch.tensor([3.0, -6.0]))
        gate.user_ab.copy_(torch.tensor([-4.0, 1.0]))
    g = gate.item(torch.tensor([[0.0, 1.0, 4.0], [2.0, 3.0, 4.0]]))
    assert g.shape == (2, 3, 1)
    assert bool(((g > 0) & (g < 2)).all())
    assert g[0, 0, 0] < 0.01 and g[0, 2, 0] > 1.9  # monotone in the count
    hist = torch.tensor([[0, 0, 4, 5, 6], [1, 2, 3, 4, 5]])
    u = gate.user(hist)
    assert u.shape == (2, 5, 1)
    assert bool(((u > 0) & (u < 2)).all())
    # the history length at a position counts only the real items up to it: left padding
    # changes nothing at the real positions (causal, as the user encoder)
    torch.testing.assert_close(u[0, 2:], gate.user(torch.tensor([[4, 5, 6]]))[0])
    assert not torch.allclose(u[1, 0], u[1, 4])


def test_zero_gate_is_the_model_without_it() -> None:
    plain, gated = gated_model(gate=False), gated_model(gate=True)
    assert plain.items.gate is None and gated.items.gate is not None
    gated.load_state_dict(plain.state_dict(), strict=False)  # the gate stays at 0 → 1
    hist = left_pad([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [39]], 8)
    with torch.no_grad():
        torch.testing.assert_close(gated.item_vectors(), plain.item_vectors())
        torch.testing.assert_close(gated.user_vectors(hist), plain.user_vectors(hist))


def test_rare_items_and_short_histories_lean_on_text() -> None:
    model = gated_model()
    gate = model.items.gate
    assert gate is not None
    with torch.no_grad():
        gate.item_ab.copy_(torch.tensor([4.0, -10.0]))  # trust an ID from ~12 purchases on
        vecs, text = model.item_vectors(), model.content(torch.arange(1, 41))
        rare, popular = 1, 39  # rows of items with 1 and 39 purchases
        torch.testing.assert_close(vecs[rare], text[rare], atol=1e-3, rtol=0)
        assert (vecs[popular] - text[popular]).norm() > 0.1
        # a user gate that distrusts IDs in short histories: a one-item history's state
        # is the one of the same item with its ID part removed
        gate.user_ab.copy_(torch.tensor([10.0, -30.0]))
        one = model.sequence_states(torch.tensor([[popular + 1]]))[0, -1]
        no_id = model.users(text[popular].view(1, 1, -1), torch.tensor([[False]]))[0, -1]
        torch.testing.assert_close(one, no_id, atol=1e-4, rtol=0)


def test_gate_gets_gradients_in_training() -> None:
    model = gated_model().train()
    hist = left_pad([[1, 2, 3], [4, 5, 6, 7]], 8)
    loss = (model.sequence_states(hist)[:, -1] @ model.item_table()[1:].T).logsumexp(-1).sum()
    loss.backward()
    gate = model.items.gate
    assert gate is not None and gate.item_ab.grad is not None and gate.user_ab.grad is not None
    assert bool((gate.item_ab.grad != 0).all()) and bool((gate.user_ab.grad != 0).all())


def test_config_round_trip_and_fusions_without_gate() -> None:
    cfg = Config.from_dict({"model": {"id_gate": True}})
    assert cfg.model.id_gate and Config.from_dict(cfg.to_dict()) == cfg
    assert Config().model.id_gate is False
    with pytest.raises(ConfigError, match="id_gate"):
        Config.from_dict({"model": {"id_gate": "sometimes"}})
    id_only = ModelConfig(fusion="id", dim=16, id_gate=True)
    text = torch.zeros(5, 8)
    model = FusedModel(id_only, text, torch.ones(5, dtype=torch.bool), torch.zeros(5))
    assert model.items.gate is None


def test_bundle_with_gate_serves_identically(tiny_dataset: Path, tmp_path: Path) -> None:
    from model_store.data.dataset import load_dataset
    from model_store.data.movielens import default_cache_dir
    from model_store.training.pipeline import train_and_publish

    cfg = Config.from_dict(
        {"model": {"dim": 32, "max_len": 20, "id_gate": True}, "train": {"epochs": 2}}
    )
    _, result = train_and_publish(
        load_dataset(tiny_dataset), cfg, tmp_path / "s", cache_dir=default_cache_dir()
    )
    loaded = bundle_mod.load_bundle(tmp_path / "s")
    trained_gate, loaded_gate = result.model.items.gate, loaded.model.items.gate
    assert trained_gate is not None and loaded_gate is not None
    assert bool((trained_gate.item_ab != 0).any())  # it was trained
    torch.testing.assert_close(loaded_gate.item_ab, trained_gate.item_ab)
    torch.testing.assert_close(loaded_gate.user_ab, trained_gate.user_ab)
    hist = torch.tensor([[0, 0, 3, 5, 9], [1, 2, 3, 4, 5]])
    with torch.inference_mode():
        a = result.model.eval().user_vectors(hist) @ result.model.item_vectors().T
        b = loaded.model.serving_encoder()(hist) @ loaded.model.item_vectors().T
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
