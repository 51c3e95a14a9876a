"""The lexical index of hybrid search: tantivy (BM25, in RAM) over the catalog's text columns.

One document per catalog row (``row`` field). A query's words (lower-cased, alphanumeric
runs, as tantivy's default tokenizer makes them) each match by BM25 on every text column
(the first column, the title, boosted), and words of 4+ letters also by a fuzzy term (one
edit, a swap of two letters counting as one) with a constant score, so a typo per word
still finds the title. ``search`` returns catalog rows with their BM25 scores, best first.

Built from the bundle's items when a snapshot loads (about a second per 100k items) and
kept current by item upserts (``upsert``); deleted and hidden rows are filtered out by the
caller's mask, like the FAISS index's removed rows.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import numpy as np
import pandas as pd
import tantivy

WORD = re.compile(r"[^\W_]+", re.UNICODE)
FUZZY_MIN_LEN = 4
TITLE_BOOST = 2.0
FUZZY_BOOST = 0.5
MAX_WORDS = 32


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)][:MAX_WORDS]


class LexicalIndex:
    """BM25 + fuzzy terms over ``columns`` of the catalog; documents are catalog rows."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        builder = tantivy.SchemaBuilder()
        builder.add_unsigned_field("row", stored=True, indexed=True, fast=True)
        for c in self.columns:
            builder.add_text_field(c, stored=False)
        self.schema = builder.build()
        self.index = tantivy.Index(self.schema)
        # reloaded by ``upsert`` itself: the default (on commit) made that reload wait
        # ~100 ms after every commit, the p99 of an item upsert
        self.index.config_reader("Manual", 0)
        self._lock = threading.Lock()
        self._writer: tantivy.IndexWriter | None = None  # one for the index's life

    @classmethod
    def build(cls, items: pd.DataFrame, columns: Sequence[str]) -> LexicalIndex:
        out = cls(columns)
        out.upsert(np.arange(len(items), dtype=np.int64), items)
        return out

    def upsert(self, rows: np.ndarray, records: pd.DataFrame) -> None:
        """Index (or re-index) ``records`` (the text columns) under catalog ``rows``."""
        with self._lock:
            if self._writer is None:  # merges run in its threads, not on the write's path
                self._writer = self.index.writer(heap_size=50_000_000, num_threads=1)
            writer = self._writer
            values = {c: records[c].tolist() for c in self.columns if c in records.columns}
            for n, row in enumerate(np.asarray(rows).tolist()):
                writer.delete_documents_by_term("row", int(row))
                doc = tantivy.Document()
                doc.add_unsigned("row", int(row))
                for c, col in values.items():
                    v = col[n]
                    if isinstance(v, str) and v:
                        doc.add_text(c, v)
                writer.add_document(doc)
            writer.commit()
            self.index.reload()

    def _query(self, terms: list[str]) -> tantivy.Query:
        subs: list[tuple[tantivy.Occur, tantivy.Query]] = []
        for w in terms:
            for i, c in enumerate(self.columns):
                q = tantivy.Query.term_query(self.schema, c, w)
                if i == 0:
                    q = tantivy.Query.boost_query(q, TITLE_BOOST)
                subs.append((tantivy.Occur.Should, q))
                if len(w) >= FUZZY_MIN_LEN:
                    fq = tantivy.Query.fuzzy_term_query(
                        self.schema, c, w, distance=1, transposition_cost_one=True
                    )
                    subs.append((tantivy.Occur.Should, tantivy.Query.boost_query(fq, FUZZY_BOOST)))
        return tantivy.Query.boolean_query(subs)

    def search(self, query: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows (≤ n,), scores) of the documents matching any word of ``query``."""
        terms = words(query)
        if not terms or n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        searcher = self.index.searcher()
        hits = searcher.search(self._query(terms), n, count=False).hits
        rows = np.asarray([searcher.doc(addr)["row"][0] for _, addr in hits], dtype=np.int64)
        scores = np.asarray([s for s, _ in hits], dtype=np.float32)
        return rows, scores
