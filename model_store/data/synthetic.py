"""Synthetic catalogs with latent topics and sequential user behaviour, fully vectorised.

Each topic has its own vocabulary of pseudo-words (syllable combinations). An item has a
main topic (and sometimes a second one), a title of a few topic words, a description of
~60 words drawn mostly from its topics plus common words, and a Zipf-like popularity.
A user has a few preferred topics whose weights drift along the sequence; the current
topic is sticky (kept with high probability from one interaction to the next), so the
next item's topic depends on the current one. Timestamps increase per user.

Items: item_id, title, description, category (the main topic's name, a text column).
Interactions: user_id, item_id, timestamp. Ids look like "u123" and "i456".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from model_store.errors import ConfigError

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_COMMON = (
    "the", "and", "of", "a", "to", "in", "is", "with", "for", "on", "as", "by", "this",
    "that", "from", "at", "an", "be", "it", "its", "are", "or", "new", "one", "all", "more",
    "most", "very", "can", "into", "over", "about", "after", "best", "great", "made", "every",
    "when", "which", "their", "who", "has", "have", "your", "our", "just", "also", "much",
    "many", "first", "well",
)  # fmt: skip
_VOCAB_PER_TOPIC = 300
_PREFS_PER_USER = 3
_STICKINESS = 0.8
_RANDOM_JUMP = 0.05
_ITEM_CHUNK = 100_000
_BASE_TIME = 1_600_000_000


def _ids(prefix: str, n: int) -> pa.Array:
    numbers = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(pa.scalar(prefix), numbers, "")


def _vocabulary(rng: np.random.Generator, topics: int) -> np.ndarray:
    """Common words followed by ``topics`` blocks of unique pseudo-words."""
    syllables = np.array([c + v for c in _CONSONANTS for v in _VOWELS])
    s = len(syllables)
    codes = rng.choice(s**3, size=topics * _VOCAB_PER_TOPIC, replace=False)
    words = np.char.add(
        np.char.add(syllables[codes // (s * s)], syllables[(codes // s) % s]),
        syllables[codes % s],
    )
    return np.concatenate([np.array(_COMMON), words]).astype(object)


def _topic_words(rng: np.random.Generator, topic: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Global word indices from each row's topic vocabulary, skewed towards frequent words."""
    rank = np.minimum((_VOCAB_PER_TOPIC * rng.random(shape) ** 2).astype(np.int64), 299)
    return len(_COMMON) + topic[:, None].astype(np.int64) * _VOCAB_PER_TOPIC + rank


def _join_rows(vocab: pa.Array, words: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Join the first ``lengths[i]`` words of row i with spaces, in arrow."""
    mask = np.arange(words.shape[1])[None, :] < lengths[:, None]
    flat = vocab.take(pa.array(words[mask]))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), flat)
    return pc.binary_join(lists, " ")


def _items_table(
    rng: np.random.Generator, n_items: int, topics: int, vocab: pa.Array
) -> tuple[pa.Table, np.ndarray]:
    topic_p = 1.0 / np.arange(1, topics + 1) ** 0.7
    topic_p /= topic_p.sum()
    main = rng.choice(topics, size=n_items, p=topic_p)
    # every topic gets at least one item (the first ``topics`` items, order shuffled)
    head = min(topics, n_items)
    main[:head] = rng.permutation(topics)[:head]
    second = np.where(rng.random(n_items) < 0.3, rng.integers(0, topics, n_items), main)
    titles, descriptions = [], []
    for start in range(0, n_items, _ITEM_CHUNK):
        sl = slice(start, min(start + _ITEM_CHUNK, n_items))
        m, s2 = main[sl], second[sl]
        n = len(m)
        t_len = rng.integers(2, 5, n)
        titles.append(pc.utf8_title(_join_rows(vocab, _topic_words(rng, m, (n, 4)), t_len)))
        d_len = rng.integers(45, 76, n)
        width = 75
        words = _topic_words(rng, m, (n, width))
        alt = _topic_words(rng, s2, (n, width))
        u = rng.random((n, width))
        words = np.where(u < 0.15, alt, words)
        common = rng.integers(0, len(_COMMON), (n, width))
        words = np.where(u > 0.7, common, words)
        descriptions.append(_join_rows(vocab, words, d_len))
    topic_names = pc.utf8_capitalize(
        vocab.take(pa.array(len(_COMMON) + np.arange(topics) * _VOCAB_PER_TOPIC))
    )
    table = pa.table(
        {
            "item_id": _ids("i", n_items),
            "title": pa.concat_arrays(titles),
            "description": pa.concat_arrays(descriptions),
            "category": topic_names.take(pa.array(main)),
        }
    )
    return table, main


def _user_lengths(rng: np.random.Generator, users: int, interactions: int) -> np.ndarray:
    activity = rng.lognormal(0.0, 1.0, users)
    floor = 3 if interactions >= 3 * users else 0
    extra = rng.multinomial(interactions - floor * users, activity / activity.sum())
    return (extra + floor).astype(np.int64)


def _interactions_table(
    rng: np.random.Generator, users: int, n: int, main_topic: np.ndarray, topics: int
) -> pa.Table:
    lengths = _user_lengths(rng, users, n)
    user = np.repeat(np.arange(users, dtype=np.int64), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(n, dtype=np.int64) - starts[user]
    progress = pos / np.maximum(lengths[user] - 1, 1)

    # Topic chain: keep the current topic with prob _STICKINESS, else jump to a preferred
    # topic whose weight drifts with the position in the sequence (or rarely anywhere).
    prefs = rng.integers(0, topics, (users, _PREFS_PER_USER))
    jump = (rng.random(n) >= _STICKINESS) | (pos == 0)
    j = np.flatnonzero(jump)
    centers = np.linspace(0.0, 1.0, _PREFS_PER_USER)
    w = np.exp(-((progress[j, None] - centers[None, :]) ** 2) / 0.08)
    cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    slot = np.minimum((rng.random(len(j))[:, None] > cum).sum(axis=1), _PREFS_PER_USER - 1)
    new_topic = prefs[user[j], slot]
    anywhere = rng.random(len(j)) < _RANDOM_JUMP
    new_topic[anywhere] = rng.integers(0, topics, int(anywhere.sum()))
    last_jump = np.maximum.accumulate(np.where(jump, np.arange(n), 0))
    topic_at = np.empty(n, dtype=np.int64)
    topic_at[j] = new_topic
    topic_at = topic_at[last_jump]

    # Item given topic: Zipf popularity (random rank), sampled within the topic's items.
    n_items = len(main_topic)
    popularity = 1.0 / (rng.permutation(n_items) + 1.0)
    by_topic = np.argsort(main_topic, kind="stable")
    cum_pop = np.cumsum(popularity[by_topic])
    bounds = np.searchsorted(main_topic[by_topic], np.arange(topics + 1), side="left")
    lo = np.where(bounds[:-1] > 0, cum_pop[np.maximum(bounds[:-1] - 1, 0)], 0.0)
    hi = cum_pop[np.maximum(bounds[1:] - 1, 0)]
    x = lo[topic_at] + rng.random(n) * (hi[topic_at] - lo[topic_at])
    picked = np.minimum(np.searchsorted(cum_pop, x, side="right"), bounds[1:][topic_at] - 1)
    item = by_topic[picked]

    first_time = _BASE_TIME + rng.integers(0, 2 * 365 * 86400, users)
    gaps = 1 + rng.exponential(3600.0, n).astype(np.int64)
    gaps[starts[lengths > 0]] = 0
    elapsed = np.cumsum(gaps)
    timestamp = first_time[user] + elapsed - elapsed[starts[user]]
    return pa.table(
        {
            "user_id": _ids("u", users).take(pa.array(user)),
            "item_id": _ids("i", n_items).take(pa.array(item)),
            "timestamp": pa.array(timestamp, type=pa.int64()),
        }
    )


def _write(table: pa.Table, path: Path, fmt: Literal["csv", "parquet"]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        pacsv.write_csv(table, tmp)
    os.replace(tmp, path)


def generate(
    *,
    users: int,
    items: int,
    interactions: int,
    out: Path,
    seed: int = 0,
    topics: int = 50,
    fmt: Literal["csv", "parquet"] = "parquet",
) -> Path:
    """Write a synthetic dataset directory to ``out`` and return it. Deterministic per seed."""
    if min(users, items, interactions, topics) < 1:
        raise ConfigError("users, items, interactions and topics must all be >= 1")
    max_topics = (len(_CONSONANTS) * len(_VOWELS)) ** 3 // _VOCAB_PER_TOPIC
    if topics > max_topics:
        raise ConfigError(f"topics={topics} is too many; at most {max_topics}")
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"fmt={fmt!r}; valid values: 'csv', 'parquet'")
    topics = min(topics, items)
    rng = np.random.default_rng(seed)
    vocab = pa.array(_vocabulary(rng, topics), type=pa.string())
    item_table, main_topic = _items_table(rng, items, topics, vocab)
    inter_table = _interactions_table(rng, users, interactions, main_topic, topics)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for other in ("csv", "parquet"):
        if other != fmt:
            for name in ("items", "interactions"):
                (out / f"{name}.{other}").unlink(missing_ok=True)
    _write(item_table, out / f"items.{fmt}", fmt)
    _write(inter_table, out / f"interactions.{fmt}", fmt)
    return out
