"""The model work of one micro-batch, run on a batcher's worker thread.

``recommend_batch``: user vectors (cached ones reused, the rest encoded in one traced call
of ``FusedModel.serving_encoder``) → FAISS top ``max(N, k)`` with each user's exclusions →
``FusedModel.rerank`` (the fusion head, when the bundle enabled it) → ``ranking.top_k``.

``search_batch``: the queries encoded by the bundle's own text model → exact cosine against
``text_emb`` (or candidates from the search index, rescored exactly) → ``ranking.blend``
with the user's retrieval scores when a user is known.

Both hold ``lock`` while they read the model, so an item upsert never changes the catalog
under a batch in flight.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app import ranking
from app.snapshot import Snapshot
from model_store.model import left_pad


@dataclass
class Scored:
    item_id: str
    score: float
    explanation: dict[str, Any] | None = None


@dataclass
class RecJob:
    snap: Snapshot
    hist: list[int]  # catalog rows, oldest first
    vector: np.ndarray | None  # cached user vector, or None to encode
    exclude: set[int]
    k: int  # 0 = only the user vector
    explain: bool


@dataclass
class RecOut:
    vector: np.ndarray
    items: list[Scored] = field(default_factory=list)


@dataclass
class SearchJob:
    snap: Snapshot
    query: str
    vector: np.ndarray | None
    k: int


def by_snapshot(jobs: list[Any]) -> list[list[int]]:
    """Positions of the jobs grouped by the snapshot they were made against (a reload can
    land between two jobs of one batch)."""
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.snap), []).append(i)
    return list(groups.values())


class ModelWork:
    """The batch functions of the two micro-batchers."""

    def __init__(self, *, lock: threading.Lock, candidates: int, search_user_weight: float):
        self.lock = lock
        self.candidates = candidates
        self.search_user_weight = search_user_weight

    # ---- recommend --------------------------------------------------------------------------
    def recommend_batch(self, jobs: list[RecJob]) -> list[RecOut]:
        out: list[RecOut | None] = [None] * len(jobs)
        with self.lock, torch.inference_mode():
            for idx in by_snapshot(jobs):
                for i, res in zip(idx, self._recommend([jobs[i] for i in idx]), strict=True):
                    out[i] = res
        return [o for o in out if o is not None]

    def _recommend(self, jobs: list[RecJob]) -> list[RecOut]:
        snap = jobs[0].snap
        model = snap.bundle.model
        dev = model.text_emb.device
        max_len = snap.bundle.config.model.max_len
        vecs = np.zeros((len(jobs), snap.item_vecs.shape[1]), dtype=np.float32)
        todo = [i for i, j in enumerate(jobs) if j.vector is None]
        hist = None  # (B, L) model input, built only when a forward needs it
        if todo or model.use_head:
            # pad to the batch's longest history, not max_len: positions count from the end
            # and padding is masked, so the numbers are the same and the forward is shorter
            width = min(max_len, max(len(j.hist) for j in jobs))
            hist = left_pad([[r + 1 for r in j.hist] for j in jobs], width).to(dev)
        if todo:
            assert hist is not None
            encode = model.serving_encoder()
            vecs[todo] = encode(hist[todo] if len(todo) < len(jobs) else hist).float().cpu().numpy()
        for i, j in enumerate(jobs):
            if j.vector is not None:
                vecs[i] = j.vector
        results = [RecOut(vecs[i]) for i in range(len(jobs))]
        ranked = [i for i, j in enumerate(jobs) if j.k > 0]
        if not ranked:
            return results
        n_keep = max(self.candidates, max(jobs[i].k for i in ranked))
        retr, cand = snap.index.search_excluding(
            vecs[ranked], n_keep, [jobs[i].exclude for i in ranked]
        )
        cand, retr, valid = ranking.valid_candidates(cand, retr, snap.n_items)
        final = retr  # retrieval order, unless the bundle's fusion head reranks
        if hist is not None and model.use_head:
            cand_t = torch.from_numpy(np.where(valid, cand + 1, 0)).to(dev)
            retr_t = torch.from_numpy(retr).to(dev)
            user_t = torch.from_numpy(vecs[ranked]).to(dev)
            final = model.rerank(hist[ranked], user_t, cand_t, retr_t).float().cpu().numpy()
        tops = ranking.top_k(final, cand, valid, [jobs[i].k for i in ranked])
        item_ids = snap.bundle.item_ids
        for b, (i, top) in enumerate(zip(ranked, tops, strict=True)):
            expl = (
                self._explain(snap, jobs[i].hist, top.rows, retr[b, top.positions])
                if jobs[i].explain
                else None
            )
            results[i].items = [
                Scored(item_ids[r], sc, expl[m] if expl is not None else None)
                for m, (r, sc) in enumerate(
                    zip(top.rows.tolist(), top.scores.tolist(), strict=True)
                )
            ]
        return results

    @staticmethod
    def _explain(
        snap: Snapshot, hist: list[int], rows: np.ndarray, retrieval: np.ndarray
    ) -> list[dict[str, Any]]:
        text = snap.bundle.model.text_emb
        h = np.asarray(list(dict.fromkeys(hist[-snap.bundle.config.model.max_len :])), np.int64)

        def text_of(r: np.ndarray) -> np.ndarray:
            return text[torch.from_numpy(r + 1).to(text.device)].float().cpu().numpy()

        return ranking.explanations(
            history_ids=[snap.bundle.item_ids[int(r)] for r in h],
            text_h=text_of(h),
            text_r=text_of(rows),
            vec_h=snap.item_vecs[h],
            vec_r=snap.item_vecs[rows],
            retrieval=retrieval,
        )

    # ---- search -----------------------------------------------------------------------------
    def search_batch(self, jobs: list[SearchJob]) -> list[list[Scored]]:
        out: list[list[Scored]] = [[] for _ in jobs]
        for idx in by_snapshot(jobs):
            snap = jobs[idx[0]].snap
            assert snap.text is not None
            q = snap.text.encode([jobs[i].query for i in idx])  # (B, T), outside the lock
            n = min(max(self.candidates, max(jobs[i].k for i in idx)), snap.n_items)
            cos, cand = self._text_candidates(snap, q, n)
            for b, i in enumerate(idx):
                job = jobs[i]
                user = None
                if job.vector is not None:
                    ok = np.maximum(cand[b], 0)
                    user = snap.item_vecs[ok] @ job.vector
                rows, scores = ranking.blend(cos[b], cand[b], user, self.search_user_weight, job.k)
                out[i] = [
                    Scored(snap.bundle.item_ids[int(r)], float(s))
                    for r, s in zip(rows, scores, strict=True)
                ]
        return out

    def _text_candidates(
        self, snap: Snapshot, q: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(cosines (B, n), rows (B, n)): the exact top ``n`` by cosine, or the search
        index's candidates rescored exactly; −inf marks a missing or removed candidate."""
        text = snap.bundle.model.text_emb
        if snap.text_index is not None:
            with self.lock:
                _, cand = snap.text_index.search(q, n)  # (B, n) rows, −1 = none
                pick = torch.from_numpy(np.maximum(cand, 0) + 1).to(text.device)
                emb = text[pick].float().cpu().numpy()
            cos = np.einsum("bt,bnt->bn", q, emb)
            return np.where(cand >= 0, cos, -np.inf), cand
        with self.lock, torch.inference_mode():
            table = text[1 : snap.n_items + 1]  # (N, T)
            sims = torch.from_numpy(q).to(text.device) @ table.T  # (B, N)
            if snap.index.removed:
                dead = torch.tensor(sorted(snap.index.removed), device=text.device)
                sims[:, dead[dead < snap.n_items]] = -torch.inf
            top_s, top_r = sims.topk(n, dim=1)
            return top_s.float().cpu().numpy(), top_r.cpu().numpy()
