"""Inference shortcuts of FusedModel give the same numbers as the training-time path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_store.config import ModelConfig
from model_store.model import layers as model_mod
from model_store.model.encoder_trace import ServedEncoder
from model_store.model.fused import FusedModel, left_pad
from model_store.model.item_tower import NeighbourTower, text_mlp


def joint_model(n: int = 40, text_dim: int = 12) -> FusedModel:
    torch.manual_seed(0)
    # no text columns: the vectors are the fused item vectors alone
    cfg = ModelConfig(fusion="joint", dim=16, max_len=8, n_layers=2, n_heads=2, text_weight=0)
    text = F.normalize(torch.randn(n + 1, text_dim), dim=-1)
    text[0] = 0
    has_id = torch.ones(n + 1, dtype=torch.bool)
    has_id[-5:] = False  # a few text-only items
    return FusedModel(cfg, text, has_id, torch.rand(n + 1)).eval()


def fused_model(fusion: str) -> FusedModel:
    """A small untrained model of the given fusion, 40 items with trained IDs."""
    torch.manual_seed(0)
    cfg = ModelConfig(fusion=fusion, dim=16, max_len=8, n_layers=2, n_heads=2, text_history=5)  # type: ignore[arg-type]
    text = F.normalize(torch.randn(41, 12), dim=-1)
    text[0] = 0
    return FusedModel(cfg, text, torch.ones(41, dtype=torch.bool), torch.rand(41)).eval()


def test_user_vector_equals_last_position_of_the_full_sequence() -> None:
    model = joint_model()
    hist = left_pad([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [39], [36, 2, 36]], 8)
    with torch.inference_mode():
        fast = model.user_vectors(hist)
    with torch.no_grad():
        full = model.sequence_states(hist)[:, -1]  # every position, no table
    assert fast.shape == (4, 16)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)


def test_text_part_table_follows_edits_and_weight_updates() -> None:
    model = joint_model()
    idx = torch.arange(1, model.n_items + 1)

    def live() -> torch.Tensor:  # computed afresh: the ID part and the text side of each item
        return model.items.id_part(idx, model.has_id) + model.content(idx)

    with torch.no_grad():
        torch.testing.assert_close(model.item_vectors(), live())
        table = model.text_part_table()
        assert table is not None and model.text_part_table() is table  # cached
        # an edited item text (in place) invalidates it
        model.replace_text(torch.tensor([3]), F.normalize(torch.randn(1, 12), dim=-1))
        assert model.text_part_table() is not table
        torch.testing.assert_close(model.item_vectors(), live())
        # a grown catalog too
        model.extend_catalog(F.normalize(torch.randn(2, 12), dim=-1))
        idx = torch.arange(1, model.n_items + 1)
        torch.testing.assert_close(model.item_vectors(), live())
        # and an optimizer step on the projection
        before = model.item_vectors()
    model.train()
    opt = torch.optim.SGD(model.items.text_proj.parameters(), lr=0.5)
    loss = model.item_vectors().pow(2).sum()
    assert model.text_part_table() is None  # training mode computes live
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model.item_vectors()
        torch.testing.assert_close(after, live())
    assert not torch.allclose(before, after)


def test_leading_padding_changes_nothing() -> None:
    """Positions count from the end and padding is masked, so a batch can be padded to its
    longest history instead of max_len (the service does): same user vectors and scores."""
    for fusion in ("joint", "late", "id"):
        model = fused_model(fusion)
        model.use_head = True
        hists = [[1, 2, 3], [9, 10], [39]]
        full, short = left_pad(hists, 8), left_pad(hists, 3)
        cand = torch.tensor([[4, 5, 6, 0], [7, 8, 1, 2], [3, 11, 12, 13]])
        retr = torch.rand(3, 4)
        with torch.inference_mode():
            u_full, u_short = model.user_vectors(full), model.user_vectors(short)
            torch.testing.assert_close(u_short, u_full, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                model.rerank(short, u_short, cand, retr),
                model.rerank(full, u_full, cand, retr),
                rtol=1e-5,
                atol=1e-6,
            )


def test_serving_encoder_matches_eager_and_follows_the_catalog() -> None:
    """The traced encoder the service uses gives eager's numbers for every batch shape and
    every fusion, and follows catalog changes (new items, edited texts) without a new trace:
    the catalog is its input (issue 28: a re-trace was 50–80 ms of every upsert)."""
    for fusion in ("joint", "late", "id", "text"):
        model = fused_model(fusion)
        with torch.inference_mode():
            encode = model.serving_encoder()
            assert isinstance(encode, ServedEncoder), fusion  # traced, not eager
            assert model.serving_encoder() is encode  # cached
            for hists, width in (
                ([[1, 2, 3]], 3),
                ([[1], [2, 3, 4, 5, 6, 7, 8, 9, 10]], 8),
                ([[39, 2], [5], [6, 7, 8], [9]], 3),
                ([[4, 5]] * 33, 12),
            ):
                hist = left_pad(hists, width)
                torch.testing.assert_close(
                    encode(hist), model.user_vectors(hist), rtol=1e-5, atol=1e-6
                )
    model = joint_model()
    hist = left_pad([[1, 2, 41, 42], [41], [3, 42]], 4)  # 41, 42: about to be added
    with torch.no_grad():
        encode = model.serving_encoder()
        traced = encode.traced
        model.extend_catalog(F.normalize(torch.randn(2, 12), dim=-1))
        assert model.serving_encoder() is encode and encode.traced is traced  # no re-trace
        grown = encode(hist)
        torch.testing.assert_close(grown, model.user_vectors(hist), rtol=1e-5, atol=1e-6)
        model.replace_text(torch.tensor([41]), F.normalize(torch.randn(1, 12), dim=-1))
        assert model.serving_encoder() is encode and encode.traced is traced
        torch.testing.assert_close(encode(hist), model.user_vectors(hist), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(encode(hist), grown)  # the edit is served
        model.truncate_catalog(40)  # an upsert undone
        short = left_pad([[1, 2, 3], [40]], 3)
        torch.testing.assert_close(encode(short), model.user_vectors(short), rtol=1e-5, atol=1e-6)


def test_catalog_tables_follow_changes_row_by_row_as_a_rebuild_would() -> None:
    """Appended items and edited texts of text-only items are followed row by row (no
    rebuild); an edited text of a trained item — which the neighbour tower reads for every
    cold item — rebuilds. Either way the tables equal fresh ones."""
    for tower in ("neighbours", "mlp"):
        model = joint_model()
        torch.manual_seed(1)  # random weights, so that every edit shows
        model.items.cold = NeighbourTower(16, 4) if tower == "neighbours" else text_mlp(12, 16)
        cache = model._inference
        with torch.no_grad():
            model.serving_reranker()  # both tables built
            model.extend_catalog(F.normalize(torch.randn(3, 12), dim=-1))
            model.replace_text(torch.tensor([42]), F.normalize(torch.randn(1, 12), dim=-1))
            assert cache._text_part is not None and cache._rerank is not None  # followed
            assert_tables_fresh(model)
            model.truncate_catalog(41)
            assert cache._text_part is not None and cache._rerank is not None
            assert_tables_fresh(model)
            model.replace_text(torch.tensor([2]), F.normalize(torch.randn(1, 12), dim=-1))
            assert (cache._text_part is None) is (tower == "neighbours")
            assert_tables_fresh(model)


def assert_tables_fresh(model: FusedModel) -> None:
    """The model's text table and rerank table equal ones computed afresh."""
    table, rerank = model.text_part_table(), model._inference.rerank_table(model)
    assert table is not None and rerank is not None
    idx = torch.arange(model.n_items + 1)
    torch.testing.assert_close(table, model.content(idx))
    torch.testing.assert_close(rerank.parts[:, 1], model.content(idx))
    torch.testing.assert_close(rerank.parts[:, 0], model.items.id_part(idx, model.has_id))
    assert rerank.text is model.text_emb and rerank.log_pop is model.log_pop
    assert rerank.all_trained is bool(model.has_id[1:].all())


def test_serving_encoder_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    model = joint_model()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracing unavailable")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with torch.no_grad():
        assert model.serving_encoder() == model.user_vectors  # the bound eager method
    model.train()
    assert model.serving_encoder() == model.user_vectors  # training never traces


def test_training_path_with_dropout_off_matches_inference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The written-out attention of training (CPU) is the fused attention of inference."""
    model = joint_model()
    hist = left_pad([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12]], 8)
    want = model.sequence_states(hist)
    monkeypatch.setattr(model_mod, "dropout", lambda x, p, training: x)
    model.train()
    got = model.sequence_states(hist)
    assert torch.allclose(got, want, atol=1e-5)


def test_cpu_dropout_drops_p_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = model_mod.dropout(x, 0.2, True)
    assert abs(float((y == 0).float().mean()) - 0.2) < 0.005
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert model_mod.dropout(x, 0.2, False) is x
    torch.manual_seed(1)
    a = model_mod.dropout(x, 0.5, True)
    torch.manual_seed(1)
    assert torch.equal(a, model_mod.dropout(x, 0.5, True))  # seeded like torch's own
