"""`fusionrec index [add|remove]` — build or update a bundle's FAISS index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import fail, out
from indexer.build import KINDS, IndexKind, IndexParams
from indexer.flat import DENSE_MAX_ITEMS
from model_store.errors import ConfigError, FusionrecError

index_app = typer.Typer(
    help="Build the FAISS index of a bundle, or add/remove items.", invoke_without_command=True
)


def _kind(value: str) -> IndexKind:
    if value not in KINDS:
        raise fail(ConfigError(f"--kind {value!r}; valid: {', '.join(KINDS)}"))
    return value


def check_device(value: str) -> str:
    if value not in ("auto", "cpu", "cuda"):
        raise fail(ConfigError(f"--device {value!r}; valid: auto, cpu, cuda"))
    return value


DbOption = Annotated[
    str | None,
    typer.Option(
        "--events",
        envvar="FUSIONREC_EVENTS_URL",
        help="the database of the catalog table (the event log's; default: SQLite in the store)",
    ),
]


@index_app.callback()
def index_cmd(
    ctx: typer.Context,
    store: Annotated[Path | None, typer.Option(help="bundle store root")] = None,
    version: Annotated[str | None, typer.Option(help="bundle version (default CURRENT)")] = None,
    kind: Annotated[str, typer.Option(help="auto, flat, hnsw or ivfpq")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="items per encode batch")] = 8192,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    recall_floor: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="refuse below this recall@100")
    ] = 0.95,
    flat_max_items: Annotated[
        int, typer.Option(help="auto: exact search up to this")
    ] = DENSE_MAX_ITEMS,
    text_index_min_items: Annotated[
        int, typer.Option(help="build a search index over text embeddings above this many items")
    ] = DENSE_MAX_ITEMS,
    memory_budget_gb: Annotated[
        float, typer.Option(help="auto: IVF-PQ when float vectors exceed this")
    ] = 4.0,
    threads: Annotated[
        int | None,
        typer.Option(
            help="threads: torch intra-op and FAISS OpenMP (default: torch FUSIONREC_THREADS "
            "else the usable cores / local processes; FAISS FUSIONREC_FAISS_THREADS else all)"
        ),
    ] = None,
    hnsw_m: Annotated[int, typer.Option(min=4, help="hnsw: links per node (M)")] = 32,
    ef_construction: Annotated[
        int, typer.Option(min=8, help="hnsw: build-time candidate list (efConstruction)")
    ] = 200,
    pq_m: Annotated[
        int, typer.Option(min=0, help="ivfpq: sub-quantizers (0 = one per dimension)")
    ] = 0,
    if_unindexed: Annotated[
        bool,
        typer.Option("--if-unindexed", help="do nothing when the bundle already has an index"),
    ] = False,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact", help="fold the catalog table's changes into a new CURRENT version"
        ),
    ] = False,
    events: DbOption = None,
) -> None:
    """Encode the catalog, build and tune the index, publish it as a new bundle version."""
    if ctx.invoked_subcommand is not None:
        return
    if store is None:
        raise fail(ConfigError("--store is required: the bundle store root to index"))
    if compact:
        return run_compact(store, db_url(events), check_device(device))
    from model_store.threads import set_threads

    params = IndexParams(
        flat_max_items=flat_max_items,
        text_index_min_items=text_index_min_items,
        memory_budget_bytes=int(memory_budget_gb * (1 << 30)),
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        pq_m=pq_m,
    )
    try:
        set_threads(threads)
        if if_unindexed and already_indexed(store, version):
            return
        dev = check_device(device)
        path = run_index(
            store,
            version,
            _kind(kind),
            params,
            batch_size=batch_size,
            device=dev,
            recall_floor=recall_floor,
            threads=threads,
        )
    except FusionrecError as exc:
        raise fail(exc) from exc
    if path is not None:
        print_indexed(path)


def run_compact(store: Path, url: str | None, device: str) -> None:
    """``--compact``: publish CURRENT with the catalog table's changes folded in."""
    from indexer.compact import compact

    try:
        path = compact(store, url, device=device)
    except FusionrecError as exc:
        raise fail(exc) from exc
    if path is None:
        out.print("no catalog changes after CURRENT's sequence: nothing to do", highlight=False)
        return
    from model_store.bundle.io import read_manifest

    seq = read_manifest(path).catalog_seq
    out.print(f"published {path}: the catalog up to change {seq}", highlight=False)


def already_indexed(store: Path, version: str | None) -> bool:
    """``--if-unindexed``: whether the bundle has an index already (said when it has)."""
    from model_store.bundle.io import read_manifest
    from model_store.bundle.store import resolve_version

    current = read_manifest(resolve_version(store, version))
    if current.index is not None:
        out.print(f"{current.version} is already indexed: nothing to do", highlight=False)
    return current.index is not None


def run_index(
    store: Path,
    version: str | None,
    kind: IndexKind,
    params: IndexParams,
    *,
    batch_size: int,
    device: str,
    recall_floor: float,
    threads: int | None,
) -> Path | None:
    """``index_bundle`` with its progress; the published version's path. Under torchrun a
    rank > 0 only encodes its block of the catalog for rank 0, which publishes (None)."""
    from fusionrec.cli.progress import encode_progress
    from indexer.publish import encode_share, index_bundle
    from model_store.training import distributed as dist_mod

    ranks = dist_mod.init(device)
    try:
        if not ranks.main:
            encode_share(store, version=version, batch_size=batch_size, device=device)
            return None
        with encode_progress("encoding items") as progress:
            return index_bundle(
                store,
                version=version,
                kind=kind,
                params=params,
                batch_size=batch_size,
                device=device,
                recall_floor=recall_floor,
                threads=threads,
                progress=progress,
            )
    finally:
        dist_mod.shutdown()  # leave the torchrun process group, if any


def print_indexed(path: Path) -> None:
    from model_store.bundle.io import read_manifest

    manifest = read_manifest(path)
    s = manifest.index
    assert s is not None  # index_bundle publishes one
    out.print(
        f"published {path}: {s.kind} index of {s.n_vectors} vectors "
        f"(dim {s.dim}, params {s.params.model_dump(by_alias=True)}), recall@10 "
        f"{s.recall10:.4f}, recall@100 {s.recall100:.4f}, built in {s.build_seconds:.2f}s, "
        f"{s.memory_bytes / 1e6:.1f} MB",
        highlight=False,
    )
    t = manifest.text_index
    if t is not None:
        out.print(
            f"search index over text embeddings: {t.kind} of {t.n_vectors} "
            f"(params {t.params.model_dump(by_alias=True)}), recall@100 {t.recall100:.4f}, "
            f"built in {t.build_seconds:.2f}s, {t.memory_bytes / 1e6:.1f} MB",
            highlight=False,
        )


@index_app.command("add")
def add_cmd(
    store: Annotated[Path, typer.Option(help="bundle store root")],
    items: Annotated[Path, typer.Option(help="CSV or Parquet with item_id + text columns")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    events: DbOption = None,
) -> None:
    """Add new items (text path) or edit items: one change of the catalog table, applied
    live by every replica (no new bundle version)."""
    from indexer.publish import read_items_file
    from model_store.catalog.writes import add_items

    try:
        rows = read_items_file(items)
        seq, _ = add_items(store, db_url(events), rows, device=check_device(device))
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"catalog change {seq}: upserted {len(rows)} item(s)", highlight=False)


@index_app.command("remove")
def remove_cmd(
    store: Annotated[Path, typer.Option(help="bundle store root")],
    ids: Annotated[list[str], typer.Option(help="item ids, comma-separated or repeated")],
    events: DbOption = None,
) -> None:
    """Delete items (never returned again): one change of the catalog table."""
    from model_store.catalog.writes import remove_items

    wanted = [i.strip() for chunk in ids for i in chunk.split(",") if i.strip()]
    if not wanted:
        raise fail(ConfigError("--ids names no item"))
    try:
        seq, _ = remove_items(store, db_url(events), wanted)
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"catalog change {seq}: removed {len(wanted)} item(s)", highlight=False)


def db_url(url: str | None) -> str | None:
    """``--events`` (``off`` or blank: the store's SQLite, as the service does)."""
    return None if url is None or url.strip() in ("", "off") else url
