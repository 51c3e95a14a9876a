"""Offline indexer: bundle → item vectors → FAISS index, published into a new bundle version.

Public API (the service uses these):

* :mod:`indexer.index` — the ``ItemIndex`` protocol (search / add / remove / save), with the
  kinds in :mod:`indexer.flat`, :mod:`indexer.hnsw`, :mod:`indexer.ivfpq`.
* :mod:`indexer.build` — choose, build and tune an index; ``read_index`` loads one back.
* :mod:`indexer.catalog` — the one item upsert/removal path (validate, encode, apply, undo).
* :mod:`indexer.publish` — ``load_index``/``load_text_index`` of a bundle, ``index_bundle``,
  ``persist_update``, and the CLI's ``add_items``/``remove_items`` jobs.
"""
