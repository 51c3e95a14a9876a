"""``fusionrec index --compact``: fold the catalog table's changes into a new bundle.

Replicas apply the table's rows after their bundle's ``catalog_seq`` at every load, so the
longer a bundle serves, the more rows a starting replica applies. Compaction loads CURRENT
with its indexes, applies the rows after its sequence up to the head — the stored text
vectors (no LM work unless the text model changed), FAISS add/remove by id — and publishes
the result as a child version whose ``catalog_seq`` is that head. Replicas follow the new
CURRENT and keep applying from its sequence; the table keeps its rows (they are the
catalog's truth, and a replica still on the old bundle needs them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from indexer import catalog
from indexer.index import ItemIndex
from indexer.publish import load_index, load_text_index, persist_update
from model_store.bundle.io import Bundle, load_bundle
from model_store.catalog.changes import Change
from model_store.catalog.table import CatalogStore, ItemRow
from model_store.catalog.writes import default_url, record_frame, row_vectors
from model_store.errors import ConfigError


def apply_rows(
    bundle: Bundle,
    index: ItemIndex,
    rows: Sequence[ItemRow],
    *,
    text_index: ItemIndex | None = None,
    device: str = "auto",
) -> tuple[int, int]:
    """Apply the table's ``rows`` (each item's latest) to ``bundle`` and its indexes in
    place; (upserted, deleted) counts."""
    live = [r for r in rows if not r.deleted]
    if live:
        records = record_frame(bundle, live)
        emb = row_vectors(bundle, live, records, device=device)
        catalog.apply_change(bundle, index, Change(records, emb), text_index=text_index)
    row_of = {item: k for k, item in enumerate(bundle.item_ids)}
    gone = [
        r.item_id
        for r in rows
        if r.deleted and r.item_id in row_of and row_of[r.item_id] not in index.removed
    ]
    if gone:
        catalog.remove_items(bundle, index, gone, text_index=text_index)
    return len(live), len(gone)


def compact(store: Path, url: str | None = None, *, device: str = "auto") -> Path | None:
    """Publish CURRENT with the table's changes folded in; None when there is none."""
    bundle = load_bundle(store, None)
    if bundle.manifest.index is None:
        raise ConfigError(
            f"{bundle.version} has no index: build one first (fusionrec index --store …)"
        )
    table = CatalogStore(url or default_url(store))
    head = table.head()
    if head <= bundle.manifest.catalog_seq:
        return None
    index = load_index(bundle)
    text_index = load_text_index(bundle)
    rows = table.rows_after(bundle.manifest.catalog_seq, head)
    upserted, deleted = apply_rows(bundle, index, rows, text_index=text_index, device=device)
    note = {"op": "compact", "upserted": upserted, "deleted": deleted, "catalog_seq": head}
    return persist_update(store, bundle, index, note=note, text_index=text_index, catalog_seq=head)
