"""Pure ranking over arrays: candidates → final order → top-k; popularity; search blend;
explanations. No model, no HTTP, no threads: each function is unit-tested on hand-made
arrays (tests/app/test_ranking.py).

Conventions: catalog rows are ints ≥ 0, −1 marks "no candidate"; scores are float32 and
−inf marks an invalid slot; every sort is stable, so ties keep the retrieval order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EXPLAIN_HISTORY = 3


@dataclass
class Ranked:
    """One query's result: catalog rows, their final scores, and each one's column in the
    candidate array it came from."""

    rows: np.ndarray
    scores: np.ndarray
    positions: np.ndarray


def valid_candidates(
    rows: np.ndarray, scores: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows with −1 outside the catalog, scores with 0 there, the validity mask)."""
    valid = (rows >= 0) & (rows < n_items)
    return (
        np.where(valid, rows, -1),
        np.where(valid, scores, 0.0).astype(np.float32),
        valid,
    )


def top_k(final: np.ndarray, rows: np.ndarray, valid: np.ndarray, ks: list[int]) -> list[Ranked]:
    """The best ``ks[b]`` valid candidates of each query ``b`` by ``final`` (B, N), with one
    stable sort for the whole batch."""
    final = np.where(valid, final, -np.inf)
    k_max = max(ks, default=0)
    orders = np.argsort(-final, axis=1, kind="stable")[:, :k_max]
    top = np.take_along_axis(final, orders, axis=1)
    rows_top = np.take_along_axis(rows, orders, axis=1)
    n_ok = np.isfinite(top).sum(axis=1)  # −inf (invalid) sorts last
    out = []
    for b, k in enumerate(ks):
        n = min(k, int(n_ok[b]))
        out.append(Ranked(rows_top[b, :n], top[b, :n], orders[b, :n]))
    return out


def popular(
    order: np.ndarray, scores: np.ndarray, k: int, excluded: set[int]
) -> list[tuple[int, float]]:
    """Cold start: the ``k`` first rows of ``order`` (most popular first, ``scores`` their
    log popularity) that are not excluded."""
    out: list[tuple[int, float]] = []
    n = k + len(excluded)
    for row, score in zip(order[:n].tolist(), scores[:n].tolist(), strict=True):
        if row not in excluded:
            out.append((row, score))
        if len(out) == k:
            break
    return out


def without(mask: np.ndarray, exclude: set[int]) -> np.ndarray:
    """A filter mask over catalog rows with the ``exclude`` rows turned off (a copy)."""
    if not exclude:
        return mask
    out = mask.copy()
    e = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
    out[e[(e >= 0) & (e < len(out))]] = False
    return out


def allowed_popular(
    order: np.ndarray, scores: np.ndarray, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The popularity order restricted to ``allowed`` rows (all when None)."""
    if allowed is None:
        return order, scores
    inside = order < len(allowed)
    keep = inside & allowed[np.where(inside, order, 0)]
    return order[keep], scores[keep]


def zscore(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x - x.mean()) / (x.std() + 1e-6)
    return out


def blend(
    cos: np.ndarray, rows: np.ndarray, user_scores: np.ndarray | None, beta: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Search order: the query's cosine, reordered by the user when there is one.

    ``score = (1 − β)·z(cos) + β·z(<u, v>)`` over the candidates (z = standardised), so the
    query decides the candidate set and the user reorders within it. Candidates with a
    non-finite cosine are dropped. → (rows, scores) of the top ``k``.
    """
    ok = np.isfinite(cos)
    cos, rows = cos[ok], rows[ok]
    score = cos
    if user_scores is not None and len(rows) > 1:
        score = (1.0 - beta) * zscore(cos) + beta * zscore(user_scores[ok])
    order = np.argsort(-score, kind="stable")[:k]
    return rows[order], score[order]


def explanations(
    *,
    history_ids: list[str],
    text_h: np.ndarray,
    text_r: np.ndarray,
    vec_h: np.ndarray,
    vec_r: np.ndarray,
    retrieval: np.ndarray,
) -> list[dict[str, Any]]:
    """Which history items are most similar to each result, by text and by vector.

    ``text_*`` are normalised text embeddings and ``vec_*`` retrieval vectors of the history
    (H) and of the results (K); ``retrieval`` (K,) the results' retrieval scores.
    """
    text_sim = text_r @ text_h.T  # (K, H)
    norm = np.linalg.norm(vec_r, axis=1, keepdims=True) * np.linalg.norm(vec_h, axis=1)[None]
    vec_sim = (vec_r @ vec_h.T) / np.maximum(norm, 1e-9)  # (K, H) cosine
    out: list[dict[str, Any]] = []
    for n in range(len(text_r)):
        top = np.argsort(-text_sim[n], kind="stable")[:EXPLAIN_HISTORY]
        out.append(
            {
                "text_similarity": float(text_sim[n].max()) if len(history_ids) else 0.0,
                "retrieval_score": float(retrieval[n]),
                "history_items": [
                    {
                        "item_id": history_ids[int(t)],
                        "text_similarity": float(text_sim[n, t]),
                        "vector_similarity": float(vec_sim[n, t]),
                    }
                    for t in top
                ],
            }
        )
    return out


def similar_explanations(
    *, text: np.ndarray, ids: np.ndarray, has_id: np.ndarray, scores: np.ndarray
) -> list[dict[str, Any]]:
    """What makes each result close to the seed item (row 0 of ``text``, ``ids`` and
    ``has_id``; the results follow): the cosine of their LM text embeddings, the cosine of
    their trained ID embeddings (the collaborative part; None when either item has no
    trained ID: added by text only) and the fused-vector cosine ``scores``."""

    def unit(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
        return out

    t, e = unit(text), unit(ids)
    text_sim = t[1:] @ t[0]
    id_sim = e[1:] @ e[0]
    out: list[dict[str, Any]] = []
    for n in range(len(scores)):
        collab = float(id_sim[n]) if bool(has_id[0]) and bool(has_id[n + 1]) else None
        out.append(
            {
                "vector_similarity": float(scores[n]),
                "text_similarity": float(text_sim[n]),
                "collaborative_similarity": collab,
                "seed_has_id": bool(has_id[0]),
                "item_has_id": bool(has_id[n + 1]),
            }
        )
    return out
