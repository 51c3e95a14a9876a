"""The service core: what the routes call, with no knowledge of HTTP.

One part per responsibility, each its own FastAPI dependency (``app.deps``) and each built
in tests without HTTP:

* :mod:`.snapshot` — the snapshot holder: loads CURRENT, reloads atomically (a refused
  bundle leaves the old one serving), readiness; :mod:`.follow` keeps it on CURRENT.
* :mod:`.reading` — recommend, search, similar items, item reads.
* :mod:`.catalog` — catalog writes: upsert, patch, delete.
* :mod:`.shoppers` — shopper events and erasure (through ``model_store.privacy``).
* :mod:`.lookup` — what readers and writers share: item rows, the one not-found error,
  filter and fields parsing, a shopper's history rows and the user-vector cache.

Calls are keyword-only and take the request models whole; they raise the domain errors of
``model_store.errors``, mapped to HTTP by ``app.errors``.
"""
