"""app/ranking.py on hand-made arrays: no model, no HTTP, no threads."""

from __future__ import annotations

import numpy as np

from app import ranking


def test_valid_candidates_mark_rows_outside_the_catalog() -> None:
    rows = np.array([[3, -1, 7, 5]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    r, s, valid = ranking.valid_candidates(rows, scores, n_items=6)
    assert r.tolist() == [[3, -1, -1, 5]]
    assert valid.tolist() == [[True, False, False, True]]
    assert s.tolist() == [[np.float32(0.9), 0.0, 0.0, np.float32(0.6)]]


def test_top_k_is_stable_skips_invalid_and_gives_each_query_its_k() -> None:
    rows = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    final = np.array([[0.5, 0.9, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3]], dtype=np.float32)
    valid = np.array([[True, True, True, False], [True, False, True, True]])
    first, second = ranking.top_k(final, rows, valid, [10, 2])
    # ties keep the retrieval order; the invalid candidate never appears
    assert first.rows.tolist() == [11, 10, 12]
    assert first.positions.tolist() == [1, 0, 2]
    assert first.scores.tolist() == [np.float32(0.9), 0.5, 0.5]
    assert second.rows.tolist() == [20, 22]


def test_popular_skips_excluded_and_stops_at_k() -> None:
    order = np.array([4, 2, 9, 1, 0])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert ranking.popular(order, scores, 2, {2}) == [(4, 5.0), (9, 3.0)]
    assert ranking.popular(order, scores, 3, {4, 2, 9, 1, 0}) == []


def test_blend_lets_the_query_choose_and_the_user_reorder() -> None:
    cos = np.array([0.9, 0.8, -np.inf, 0.7], dtype=np.float32)
    rows = np.array([1, 2, 3, 4])
    rows_q, scores_q = ranking.blend(cos, rows, None, 0.3, 3)
    assert rows_q.tolist() == [1, 2, 4]  # query order; the non-finite candidate is dropped
    assert scores_q.tolist() == [np.float32(0.9), np.float32(0.8), np.float32(0.7)]
    user = np.array([0.0, 0.0, 99.0, 10.0])  # the user strongly prefers row 4
    rows_u, _ = ranking.blend(cos, rows, user, 0.9, 3)
    assert rows_u[0] == 4 and 3 not in rows_u.tolist()


def test_explanations_name_the_most_similar_history_items() -> None:
    text_h = np.eye(3, dtype=np.float32)  # three history items along the axes
    text_r = np.array([[0.0, 0.6, 0.8]], dtype=np.float32)  # closest to h2, then h1
    vec_h = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    vec_r = np.array([[0.0, 2.0]], dtype=np.float32)
    (ex,) = ranking.explanations(
        history_ids=["a", "b", "c"],
        text_h=text_h,
        text_r=text_r,
        vec_h=vec_h,
        vec_r=vec_r,
        retrieval=np.array([1.5]),
    )
    assert ex["retrieval_score"] == 1.5
    assert ex["text_similarity"] == np.float32(0.8)
    assert [h["item_id"] for h in ex["history_items"]] == ["c", "b", "a"]
    assert ex["history_items"][1]["vector_similarity"] == 1.0  # b points the same way
