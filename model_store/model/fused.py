"""The fused model: item tower (``item_tower``), causal user encoder (``layers``), fusion
head (``fusion_head``), over one catalog of text embeddings.

Item indices: 0 is padding; catalog item ``k`` (row ``k`` of the bundle's item map) has index
``k + 1``. An item with ``has_id = False`` (never seen in training, or added after training)
takes the text path only, so it stays recommendable.

One encode path: the trainer, the evaluator, the indexer and the service all call
``FusedModel.item_vectors`` and ``FusedModel.user_vectors``; the retrieval score is
``<user_vector, item_vector>``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_store.config import ModelConfig
from model_store.model.fusion_head import FusionHead
from model_store.model.item_tower import ItemTower, grown_embedding
from model_store.model.layers import UserEncoder
from model_store.model.rerank import Reranker, table_rerank
from model_store.model.serving import InferenceCache


class FusedModel(nn.Module):
    """Item tower + user encoder + fusion head over a fixed catalog of text embeddings.

    Buffers: ``text_emb`` (N+1, T) normalised LM embeddings (row 0 zero), ``has_id`` (N+1,)
    whether an item has a trained ID embedding, ``log_pop`` (N+1,) log(1 + training count).
    """

    def __init__(
        self, cfg: ModelConfig, text_emb: torch.Tensor, has_id: torch.Tensor, log_pop: torch.Tensor
    ) -> None:
        super().__init__()
        self.cfg = cfg
        n_items, text_dim = text_emb.shape[0] - 1, text_emb.shape[1]
        self.register_buffer("text_emb", text_emb.float(), persistent=False)
        self.register_buffer("has_id", has_id.bool(), persistent=False)
        self.register_buffer("log_pop", log_pop.float(), persistent=False)
        self.items = ItemTower(cfg, n_items, text_dim)
        self.users = UserEncoder(cfg)
        self.head = FusionHead(cfg.rerank_hidden)
        self.use_head = False
        # bumped by every catalog change (the service's follower reads it)
        self.catalog_version = 0
        self._inference = InferenceCache()

    text_emb: torch.Tensor
    has_id: torch.Tensor
    log_pop: torch.Tensor

    @property
    def n_items(self) -> int:
        return int(self.text_emb.shape[0] - 1)

    @property
    def out_dim(self) -> int:
        """Dimension of the retrieval vectors that the index stores."""
        if self.cfg.fusion == "text":
            return int(self.text_emb.shape[1])
        if self.cfg.fusion == "late":
            return self.cfg.dim + int(self.text_emb.shape[1])
        extra = (1 if self._offset_column else 0) + (self.text_dim if self._text_columns else 0)
        return self.cfg.dim + extra

    @property
    def text_dim(self) -> int:
        return int(self.text_emb.shape[1])

    @property
    def _text_columns(self) -> bool:
        """joint with a ``text_weight``: the raw text embedding rides along (late-style)."""
        return self.cfg.fusion == "joint" and self.cfg.text_weight > 0

    @property
    def _offset_column(self) -> bool:
        """joint with a ``cold_offset``: one more coordinate carries it (the user's is 1)."""
        return self.cfg.fusion == "joint" and self.cfg.cold_offset != 0

    # ---- catalog growth (new items take the text path) ---------------------------------
    # The serving caches follow each change row by row (``InferenceCache.following``): an
    # upsert costs its own rows, not a re-trace nor a new projection of the whole catalog.
    def extend_catalog(self, text_emb: torch.Tensor) -> None:
        """Append items with text embeddings (M, T) and no trained ID (text path only)."""
        dev = self.text_emb.device
        with self._inference.following(self):
            self.text_emb = torch.cat([self.text_emb, text_emb.to(dev, torch.float32)])
            self.has_id = torch.cat(
                [self.has_id, torch.zeros(len(text_emb), dtype=torch.bool, device=dev)]
            )
            self.log_pop = torch.cat([self.log_pop, torch.zeros(len(text_emb), device=dev)])
            old = self.items.id_emb
            self.items.id_emb = grown_embedding(old, old.num_embeddings + len(text_emb)).to(dev)
        self.catalog_version += 1

    def truncate_catalog(self, n_items: int) -> None:
        """Drop the items after the first ``n_items`` (undo of ``extend_catalog``)."""
        keep = n_items + 1
        with self._inference.following(self):
            self.text_emb = self.text_emb[:keep]
            self.has_id = self.has_id[:keep]
            self.log_pop = self.log_pop[:keep]
            emb = self.items.id_emb
            if emb.num_embeddings > keep:
                shrunk = nn.Embedding(keep, emb.embedding_dim, padding_idx=0)
                shrunk = shrunk.to(emb.weight.device)
                with torch.no_grad():
                    shrunk.weight.copy_(emb.weight[:keep])
                self.items.id_emb = shrunk
        self.catalog_version += 1

    def replace_text(self, idx: torch.Tensor, text_emb: torch.Tensor) -> None:
        """Change the text embedding of existing items (their text was edited)."""
        with self._inference.following(self, idx):
            self.text_emb[idx] = text_emb.to(self.text_emb.device, torch.float32)
        self.catalog_version += 1

    def mark_catalog_changed(self) -> None:
        """The catalog's vectors changed outside the methods above (the cold tower was
        retrained): the inference tables keyed on the catalog are rebuilt."""
        self._inference.drop_tables()
        self.catalog_version += 1

    # ---- the one encode path ------------------------------------------------------------
    def _fused_items(self, idx: torch.Tensor) -> torch.Tensor:
        table = self.text_part_table()  # inference: projected once per catalog, not per call
        if table is not None:
            return self.id_part(idx) + table[idx]
        if self.cfg.fusion == "joint":
            text = self.items.text_part(self.text_emb[idx]) if self.training else self.content(idx)
            return self.id_part(idx) + text
        out: torch.Tensor = self.items(idx, self.text_emb[idx], self.has_id)
        return out

    def id_part(self, idx: torch.Tensor) -> torch.Tensor:
        """The ID side of items ``idx`` (...,) → (..., D), scaled by the item gate if any."""
        out = self.items.id_part(idx, self.has_id)
        gate = self.items.gate
        return out if gate is None else out * gate.item(self.log_pop[idx])

    def content(self, idx: torch.Tensor) -> torch.Tensor:
        """The text side of items ``idx`` (...,) → (..., D): the text projection for items
        with a trained ID, the cold tower for the others (at inference)."""
        part = self.items.text_part(self.text_emb[idx])
        trained = self.has_id[idx]
        if self.items.cold is None or bool(trained.all()):
            return part
        flat = part.reshape(-1, part.shape[-1]).clone()
        cold = ~trained.reshape(-1)
        flat[cold] = self.cold_vectors(idx.reshape(-1)[cold]).to(flat.dtype)
        return flat.reshape(part.shape)

    def cold_vectors(
        self, idx: torch.Tensor, *, leave_out_self: bool = False, text_dropout: float = 0.0
    ) -> torch.Tensor:
        """The cold tower's vectors of items ``idx`` (M,) → (M, D), from their text alone.

        ``leave_out_self``: an item with a trained ID is not its own neighbour (training the
        tower, shrinkage), as a new item never is.
        """
        cold = self.items.cold
        assert cold is not None
        text = self.text_emb[idx]
        if isinstance(cold, nn.Sequential):
            mlp: torch.Tensor = cold(F.dropout(text, text_dropout, training=text_dropout > 0))
            return mlp
        bank = torch.nonzero(self.has_id).squeeze(-1)
        built = None if self.training else self._inference.text_part_built(self)
        with torch.no_grad():  # the bank's text side: the inference table's rows when built
            bank_text = self.items.text_part(self.text_emb[bank]) if built is None else built[bank]
            bank_vecs = self.id_part(bank) + bank_text
        self_pos = None
        if leave_out_self:
            pos = torch.full((self.n_items + 1,), -1, dtype=torch.long, device=idx.device)
            pos[bank] = torch.arange(len(bank), device=idx.device)
            self_pos = pos[idx]
        out: torch.Tensor = cold(
            text, self.text_emb[bank], bank_vecs, self_pos, text_dropout=text_dropout
        )
        return out

    def item_vectors(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Retrieval vectors of items ``idx`` (default: all, index 1..N) → (M, out_dim)."""
        if idx is None:
            idx = torch.arange(1, self.n_items + 1, device=self.text_emb.device)
        fusion = self.cfg.fusion
        if fusion == "text":
            return self.text_emb[idx]
        if fusion == "late":
            return torch.cat([self._fused_items(idx), self.text_emb[idx]], dim=-1)
        fused = self._fused_items(idx)
        kappa = self.cfg.id_shrinkage
        if fusion == "joint" and kappa > 0 and self.items.cold is not None:
            # a rarely bought item's ID vector is noisy: shrink it towards what its text
            # alone predicts, with the weight of kappa pseudo-interactions
            n = torch.expm1(self.log_pop[idx]).unsqueeze(-1)
            lam = n / (n + kappa)
            fused = lam * fused + (1 - lam) * self.cold_vectors(idx, leave_out_self=True)
        if self._offset_column:
            # every item without a trained ID scores cold_offset more: calibrates new items
            # against trained ones (chosen on validation users, bench/cold_tuning.py)
            offset = (~self.has_id[idx]).to(fused.dtype).unsqueeze(-1) * self.cfg.cold_offset
            fused = torch.cat([fused, offset], dim=-1)
        if self._text_columns:
            fused = torch.cat([fused, self.text_emb[idx]], dim=-1)
        return fused

    def item_table(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The trained item vectors, the user encoder's inputs: of ``idx``, or of every index
        0..N (row 0 = padding) in one pass → (N + 1, D).

        Training scores with these (``late`` serves them concatenated with the raw text
        embedding, which is not trained). The full softmax needs all of them at each step,
        and then indexes the history windows into the same table instead of fusing their
        items a second time.
        """
        if idx is None:
            idx = torch.arange(self.n_items + 1, device=self.text_emb.device)
        return self._fused_items(idx)

    def sequence_states(
        self,
        hist: torch.Tensor,
        table: torch.Tensor | None = None,
        *,
        last_only: bool = False,
        dropped: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hist (B, L) left-padded indices → (B, L, D) user state after each position
        (``last_only``: only the last one, (B, 1, D), computed without the others).

        ``table``: the item vectors already fused (``item_table()``, the full softmax's);
        with the ID gate each position's ID part is scaled once more by the user gate,
        except for the items ``dropped`` (N+1,) whose rows of ``table`` carry no ID part.
        """
        x = self._fused_items(hist) if table is None else table[hist]  # (B, L, D)
        gate = self.items.gate
        if gate is not None:
            idp = self.id_part(hist)
            if dropped is not None:
                idp = idp * (~dropped[hist]).unsqueeze(-1).to(idp.dtype)
            x = x + (gate.user(hist) - 1.0) * idp
        out: torch.Tensor = self.users(x, hist == 0, last_only=last_only)
        return out

    def text_user(self, hist: torch.Tensor) -> torch.Tensor:
        """Zero-shot LM user vector: decayed mean of the last items' text embeddings → (B, T)."""
        n = self.cfg.text_history
        last = hist[:, -n:]
        decay = self.cfg.text_decay ** torch.arange(
            last.shape[1] - 1, -1, -1, device=hist.device, dtype=torch.float32
        )
        w = (last != 0).float() * decay
        u = (self.text_emb[last] * w.unsqueeze(-1)).sum(1)
        return F.normalize(u, dim=-1)

    def user_vectors(self, hist: torch.Tensor) -> torch.Tensor:
        """hist (B, L) left-padded item indices, most recent last → (B, out_dim)."""
        hist = hist[:, -self.cfg.max_len :]
        fusion = self.cfg.fusion
        if fusion == "text":
            return self.text_user(hist)
        u = self.sequence_states(hist, last_only=True)[:, -1]  # (B, D)
        if fusion == "late":
            w = self.cfg.late_weight
            zt = self.text_user(hist) * (w / self.cfg.text_temperature)
            return torch.cat([u * (1.0 - w), zt], dim=-1)
        if self._offset_column:
            u = torch.cat([u, torch.ones_like(u[:, :1])], dim=-1)
        if self._text_columns:
            zt = self.text_user(hist) * (self.cfg.text_weight / self.cfg.text_temperature)
            u = torch.cat([u, zt], dim=-1)
        return u

    # ---- inference (model_store.model.serving) -------------------------------------------
    def serving_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``user_vectors`` as the service calls it: traced once per catalog where it can be
        (``InferenceCache.serving_encoder``), eager otherwise."""
        return self._inference.serving_encoder(self)

    def serving_reranker(self) -> Reranker:
        """``rerank`` as the service calls it: traced with the per-item table where it can
        be (``InferenceCache.serving_reranker``), eager otherwise."""
        return self._inference.serving_reranker(self)

    def text_part_table(self) -> torch.Tensor | None:
        """The text side of every catalog item (N+1, D), computed once per catalog and
        weights for inference (``InferenceCache.text_part_table``); None in training."""
        return self._inference.text_part_table(self)

    # ---- fusion head ----------------------------------------------------------------------
    def rerank_features(
        self, hist: torch.Tensor, user: torch.Tensor, cand: torch.Tensor, retrieval: torch.Tensor
    ) -> torch.Tensor:
        """hist (B, L), user (B, out_dim), cand (B, N) indices, retrieval (B, N) → (B, N, F).

        At inference (``joint``) from the per-item table (``InferenceCache.rerank_table``)."""
        table = self._inference.rerank_table(self)
        if table is not None:
            return table.features(hist, user, cand, retrieval, self.cfg.text_history)
        return self._features_generic(hist, user, cand, retrieval)

    def _features_generic(
        self, hist: torch.Tensor, user: torch.Tensor, cand: torch.Tensor, retrieval: torch.Tensor
    ) -> torch.Tensor:
        n = cand.shape[1]
        text_c = self.text_emb[cand]  # (B, N, T)
        last = hist[:, -self.cfg.text_history :]
        text_h = self.text_emb[last]  # (B, h, T)
        sims = torch.einsum("bnt,bht->bnh", text_c, text_h)
        valid = (last != 0).unsqueeze(1)
        sims_masked = sims.masked_fill(~valid, -1.0)
        max_sim = sims_masked.max(-1).values
        mean_sim = (sims * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        d = self.cfg.dim
        if self.cfg.fusion in ("id", "joint", "late"):
            u = user[:, :d]
            if self.cfg.fusion == "late":
                u = u / max(1.0 - self.cfg.late_weight, 1e-6)
            id_dot = torch.einsum("bd,bnd->bn", u, self.id_part(cand))
            if self.cfg.fusion == "joint":
                table = self.text_part_table()
                part = table[cand] if table is not None else self.content(cand)
                text_dot = torch.einsum("bd,bnd->bn", u, part)
            else:
                text_dot = torch.einsum("bt,bnt->bn", self.text_user(hist), text_c)
        else:
            id_dot = torch.zeros_like(retrieval)
            text_dot = retrieval
        rank = torch.log1p(torch.arange(n, device=cand.device, dtype=torch.float32))
        return torch.stack(
            [
                retrieval,
                id_dot,
                text_dot,
                max_sim,
                mean_sim,
                self.log_pop[cand],
                rank.expand_as(retrieval),
            ],
            dim=-1,
        )

    def rerank(
        self, hist: torch.Tensor, user: torch.Tensor, cand: torch.Tensor, retrieval: torch.Tensor
    ) -> torch.Tensor:
        """Final scores of candidates ``cand`` (B, N) sorted by retrieval score → (B, N).

        The head is trained on items with IDs only; for an item without one (added by its
        text) two of its features (the ID-part dot product, the log popularity) are zero, which
        the head reads as "never bought" and buries it, undoing the cold tower's calibrated
        offset (issue 17). So an ID-less candidate is not reranked by the head: it keeps its
        retrieval score plus the median head correction of the user's candidates with IDs,
        i.e. its retrieval standing among them.
        """
        if not self.use_head:
            return retrieval
        table = self._inference.rerank_table(self)
        if table is not None:
            return table_rerank(self, table, hist, user, cand, retrieval)
        fused: torch.Tensor = self.head(self._features_generic(hist, user, cand, retrieval))
        cold = ~self.has_id[cand]
        if not bool(cold.any()):
            return fused
        shift = (fused - retrieval).masked_fill(cold, float("nan"))
        typical = torch.nanmedian(shift, dim=1, keepdim=True).values.nan_to_num(0.0)
        return torch.where(cold, retrieval + typical, fused)


def left_pad(histories: list[list[int]], length: int) -> torch.Tensor:
    """Lists of item indices (oldest first) → (B, length) long tensor, left padded with 0."""
    out = np.zeros((len(histories), length), dtype=np.int64)  # numpy: 7× faster per row
    for row, h in enumerate(histories):
        h = h[-length:]
        if len(h):
            out[row, length - len(h) :] = h
    return torch.from_numpy(out)
