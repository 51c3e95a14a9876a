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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from app import ranking
from app.core.snapshot import Snapshot
from indexer.index import empty_result, search_allowed
from model_store.model.fused import left_pad


@dataclass
class Scored:
    item_id: str
    score: float
    explanation: dict[str, Any] | None = None
    fields: dict[str, Any] | None = None


@dataclass
class RecJob:
    snap: Snapshot
    hist: list[int]  # catalog rows, oldest first
    vector: np.ndarray | None  # cached user vector, or None to encode
    exclude: set[int]
    k: int  # 0 = only the user vector
    explain: bool
    allowed: np.ndarray | None = None  # filter mask over catalog rows; None = every live row


@dataclass
class RecOut:
    vector: np.ndarray
    items: list[Scored] = field(default_factory=list)


SearchMode = Literal["dense", "hybrid"]
RRF_K = 60  # reciprocal rank fusion: 1 / (RRF_K + rank), Cormack et al. 2009


@dataclass
class SearchJob:
    snap: Snapshot
    query: str
    vector: np.ndarray | None
    k: int
    allowed: np.ndarray | None = None  # filter mask over catalog rows; None = every live row
    mode: SearchMode = "dense"
    offset: int = 0  # results skipped (pagination): the page is [offset, offset + k)
    # the query's embedding: given when cached, else set by ``search_batch`` when encoded
    embedding: np.ndarray | None = None


def _dot(q: np.ndarray, table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Exact scores ``q @ table[rows].T`` for ``search_allowed``."""

    def scores(rows: np.ndarray) -> np.ndarray:
        out: np.ndarray = q @ table[rows].T
        return out

    return scores


def _query_embeddings(snap: Snapshot, jobs: list[SearchJob]) -> np.ndarray:
    """(B, T) embeddings of the jobs' queries: the cached ones reused, the rest encoded in
    one call of the bundle's text model and handed back on their jobs (``embedding``)."""
    assert snap.text is not None
    todo = [b for b, job in enumerate(jobs) if job.embedding is None]
    if todo:
        new = snap.text.encode([jobs[b].query for b in todo])
        for b, vec in zip(todo, new, strict=True):
            jobs[b].embedding = vec
    return np.stack([job.embedding for job in jobs if job.embedding is not None])


def by_snapshot(jobs: list[Any]) -> list[list[int]]:
    """Positions of the jobs grouped by the snapshot they were made against (a reload can
    land between two jobs of one batch)."""
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.snap), []).append(i)
    return list(groups.values())


class ModelWork:
    """The batch functions of the two micro-batchers."""

    def __init__(
        self,
        *,
        lock: threading.Lock,
        candidates: int,
        search_user_weight: float,
        min_similarity: float = 0.3,
    ):
        self.lock = lock
        self.candidates = candidates
        self.search_user_weight = search_user_weight
        self.min_similarity = min_similarity

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
        retr, cand = self._retrieve(snap, vecs[ranked], n_keep, [jobs[i] for i in ranked])
        cand, retr, valid = ranking.valid_candidates(cand, retr, snap.n_items)
        final = retr  # retrieval order, unless the bundle's fusion head reranks
        if hist is not None and model.use_head:
            cand_t = torch.from_numpy(np.where(valid, cand + 1, 0)).to(dev)
            retr_t = torch.from_numpy(retr).to(dev)
            user_t = torch.from_numpy(vecs[ranked]).to(dev)
            rerank = model.serving_reranker()
            final = rerank(hist[ranked], user_t, cand_t, retr_t).float().cpu().numpy()
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
    def _retrieve(
        snap: Snapshot, vecs: np.ndarray, n: int, jobs: list[RecJob]
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS top ``n`` of each job (B, n): unfiltered jobs in one call with their
        exclusions, filtered ones each over its allowed rows (``search_allowed``)."""
        plain = [b for b, j in enumerate(jobs) if j.allowed is None]
        if len(plain) == len(jobs):
            return snap.index.search_excluding(vecs, n, [j.exclude for j in jobs])
        retr, cand = empty_result(len(jobs), n)
        if plain:
            r, c = snap.index.search_excluding(vecs[plain], n, [jobs[b].exclude for b in plain])
            retr[plain], cand[plain] = r, c
        for b, job in enumerate(jobs):
            if job.allowed is None:
                continue
            q = vecs[b : b + 1]
            allowed = ranking.without(job.allowed, job.exclude)
            r, c = search_allowed(snap.index, q, n, allowed, _dot(q, snap.item_vecs))
            retr[b], cand[b] = r[0], c[0]
        return retr, cand

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
            q = _query_embeddings(snap, [jobs[i] for i in idx])  # (B, T), outside the lock
            n = min(
                max(self.candidates, max(jobs[i].k + jobs[i].offset for i in idx)), snap.n_items
            )
            plain = [b for b, i in enumerate(idx) if jobs[i].allowed is None]
            cos = np.full((len(idx), n), -np.inf, dtype=np.float32)
            cand = np.full((len(idx), n), -1, dtype=np.int64)
            if plain:
                c_plain, r_plain = self._text_candidates(snap, q[plain], n)
                cos[plain], cand[plain] = c_plain, r_plain
            for b, i in enumerate(idx):
                allowed = jobs[i].allowed
                if allowed is not None:
                    c_b, r_b = self._text_allowed(snap, q[b : b + 1], n, allowed)
                    cos[b], cand[b] = c_b[0], r_b[0]
            for b, i in enumerate(idx):
                job = jobs[i]
                score, rows_b = cos[b], cand[b]
                if job.mode == "hybrid":
                    score, rows_b = self._hybrid(snap, job, cos[b], cand[b], n)
                user = None
                if job.vector is not None:
                    ok = np.maximum(rows_b, 0)
                    user = snap.item_vecs[ok] @ job.vector
                want = job.k + job.offset
                rows, scores = ranking.blend(score, rows_b, user, self.search_user_weight, want)
                rows, scores = rows[job.offset :], scores[job.offset :]
                out[i] = [
                    Scored(snap.bundle.item_ids[int(r)], float(s))
                    for r, s in zip(rows, scores, strict=True)
                ]
        return out

    def _hybrid(
        self, snap: Snapshot, job: SearchJob, cos: np.ndarray, cand: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Dense candidates and BM25 matches fused by reciprocal rank → (scores, rows); a
        dense-only candidate needs a cosine ≥ ``min_similarity`` (the relevance floor)."""
        with self.lock:
            lex_rows, _ = snap.lexical.search(job.query, n)
        mask = job.allowed if job.allowed is not None else snap.attrs.visible
        inside = lex_rows < len(mask)
        lex_rows = lex_rows[inside & mask[np.where(inside, lex_rows, 0)]]
        dense_ok = np.isfinite(cos) & (cand >= 0)
        d_rows, d_cos = cand[dense_ok], cos[dense_ok]
        fused: dict[int, float] = {}
        for rank, r in enumerate(d_rows.tolist()):
            if d_cos[rank] >= self.min_similarity:
                fused[r] = 1.0 / (RRF_K + rank + 1)
        for rank, r in enumerate(lex_rows.tolist()):
            fused[r] = fused.get(r, 0.0) + 1.0 / (RRF_K + rank + 1)
        if not fused:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        rows = np.fromiter(fused, dtype=np.int64, count=len(fused))
        scores = np.fromiter(fused.values(), dtype=np.float32, count=len(fused))
        return scores, rows

    def _text_allowed(
        self, snap: Snapshot, q: np.ndarray, n: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(cosines (1, n), rows (1, n)) of the best ``n`` allowed rows for one query: exact
        over the allowed rows' text embeddings, or through the search index when many are
        allowed (``search_allowed``); −inf / −1 where fewer rows are allowed."""
        text = snap.bundle.model.text_emb

        def exact(rows: np.ndarray) -> np.ndarray:
            emb = text[torch.from_numpy(rows + 1).to(text.device)].float().cpu().numpy()
            out: np.ndarray = q @ emb.T
            return out

        with self.lock, torch.inference_mode():
            return search_allowed(snap.text_index, q, n, allowed, exact)

    # ---- similar items ----------------------------------------------------------------------
    def similar(
        self, snap: Snapshot, row: int, k: int, allowed: np.ndarray, explain: bool
    ) -> list[Scored]:
        """The ``k`` allowed items closest to catalog ``row`` by cosine of the item vectors
        (candidates from the index when many rows are allowed, rescored exactly)."""
        vecs = snap.item_vecs
        v = vecs[row : row + 1]  # (1, D)
        norms = np.linalg.norm(vecs, axis=1)

        def cosine(rows: np.ndarray) -> np.ndarray:
            out: np.ndarray = (v @ vecs[rows].T) / np.maximum(norms[rows] * norms[row], 1e-9)
            return out

        n = max(self.candidates, k)
        with self.lock:
            _, cand = search_allowed(snap.index, v, n, ranking.without(allowed, {row}), cosine)
        rows = cand[0][cand[0] >= 0]
        scores = cosine(rows)[0] if len(rows) else np.zeros(0, np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        rows, scores = rows[order], scores[order]
        expl = self._explain_similar(snap, row, rows, scores) if explain else None
        return [
            Scored(snap.bundle.item_ids[int(r)], float(sc), expl[m] if expl else None)
            for m, (r, sc) in enumerate(zip(rows.tolist(), scores.tolist(), strict=True))
        ]

    def _explain_similar(
        self, snap: Snapshot, row: int, rows: np.ndarray, scores: np.ndarray
    ) -> list[dict[str, Any]]:
        model = snap.bundle.model
        with self.lock, torch.inference_mode():
            idx = torch.from_numpy(np.concatenate([[row], rows]).astype(np.int64) + 1)
            idx = idx.to(model.text_emb.device)
            text = model.text_emb[idx].float().cpu().numpy()
            ids = model.items.id_emb.weight[idx].float().cpu().numpy()
            has_id = model.has_id[idx].cpu().numpy()
        return ranking.similar_explanations(text=text, ids=ids, has_id=has_id, scores=scores)

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
