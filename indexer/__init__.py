"""Offline indexer: bundle → item vectors → FAISS index, published into a new bundle version.

Public API (the service uses these):

* :class:`indexer.build.ItemIndex` — search / add / remove / save / load.
* :func:`indexer.publish.load_index` — a bundle's verified index.
* :func:`indexer.publish.upsert_in_memory`, :func:`indexer.publish.remove_in_memory`,
  :func:`indexer.publish.persist_update` — POST /v1/items.
* :func:`indexer.publish.index_bundle`, :func:`indexer.publish.add_items`,
  :func:`indexer.publish.remove_items` — the CLI's jobs.
"""
