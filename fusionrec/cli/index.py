"""`fusionrec index [add|remove]` — build or update a bundle's FAISS index."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from indexer.build import KINDS, IndexKind, IndexParams
from indexer.flat import DENSE_MAX_ITEMS
from model_store.errors import ConfigError, FusionrecError

console = Console(stderr=True)
out = Console()

index_app = typer.Typer(
    help="Build the FAISS index of a bundle, or add/remove items.", invoke_without_command=True
)


def fail(exc: FusionrecError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- items/s" if speed is None else f"{speed:,.0f} items/s", style="cyan")


@contextmanager
def encode_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich bar on a terminal; in a log, plain lines (``model_store.progress``)."""
    if not console.is_terminal:
        from model_store.progress import stage_lines

        lines = stage_lines(label)
        yield lambda n, total: lines(n, total)
        return
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def advance(n: int, total: int) -> None:
            bar.update(task, total=total, advance=n)

        yield advance


@contextmanager
def _leave_group_after() -> Iterator[None]:
    """Leave the torchrun process group (if any) when the block ends."""
    from model_store.training.distributed import shutdown

    try:
        yield
    finally:
        shutdown()


def _kind(value: str) -> IndexKind:
    if value not in KINDS:
        raise fail(ConfigError(f"--kind {value!r}; valid: {', '.join(KINDS)}"))
    return value


def _device(value: str) -> str:
    if value not in ("auto", "cpu", "cuda"):
        raise fail(ConfigError(f"--device {value!r}; valid: auto, cpu, cuda"))
    return value


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
) -> None:
    """Encode the catalog, build and tune the index, publish it as a new bundle version."""
    # (long: one parameter per command-line option; the work is index_bundle's)
    if ctx.invoked_subcommand is not None:
        return
    if store is None:
        raise fail(ConfigError("--store is required: the bundle store root to index"))
    from indexer.publish import encode_share, index_bundle
    from model_store.bundle.io import read_manifest
    from model_store.bundle.store import resolve_version
    from model_store.threads import set_threads
    from model_store.training import distributed as dist_mod

    try:
        set_threads(threads)
        if if_unindexed:
            current = read_manifest(resolve_version(store, version))
            if current.index is not None:
                out.print(f"{current.version} is already indexed: nothing to do", highlight=False)
                return
    except FusionrecError as exc:
        raise fail(exc) from exc
    params = IndexParams(
        flat_max_items=flat_max_items,
        text_index_min_items=text_index_min_items,
        memory_budget_bytes=int(memory_budget_gb * (1 << 30)),
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        pq_m=pq_m,
    )
    try:
        ranks = dist_mod.init(_device(device))
        if not ranks.main:  # torchrun: encode this rank's block for rank 0, which publishes
            try:
                encode_share(store, version=version, batch_size=batch_size, device=device)
            finally:
                dist_mod.shutdown()
            return
        with encode_progress("encoding items") as progress, _leave_group_after():
            path = index_bundle(
                store,
                version=version,
                kind=_kind(kind),
                params=params,
                batch_size=batch_size,
                device=_device(device),
                recall_floor=recall_floor,
                threads=threads,
                progress=progress,
            )
    except FusionrecError as exc:
        raise fail(exc) from exc
    manifest = read_manifest(path)
    s = manifest.index
    assert s is not None  # index_bundle publishes one
    out.print(
        f"published {path}: {s.kind} index of {s.n_vectors} vectors "
        f"(dim {s.dim}, params {s.params.model_dump(by_alias=True)}), recall@10 {s.recall10:.4f}, "
        f"recall@100 {s.recall100:.4f}, built in {s.build_seconds:.2f}s, "
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
) -> None:
    """Add new items (text path) or re-encode changed ones; publish a new version."""
    from indexer.publish import add_items, read_items_file

    try:
        rows = read_items_file(items)
        path = add_items(store, rows, device=_device(device))
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"published {path}: upserted {len(rows)} item(s)", highlight=False)


@index_app.command("remove")
def remove_cmd(
    store: Annotated[Path, typer.Option(help="bundle store root")],
    ids: Annotated[list[str], typer.Option(help="item ids, comma-separated or repeated")],
) -> None:
    """Remove items from the index (never returned again); publish a new version."""
    from indexer.publish import remove_items

    wanted = [i.strip() for chunk in ids for i in chunk.split(",") if i.strip()]
    if not wanted:
        raise fail(ConfigError("--ids names no item"))
    try:
        path = remove_items(store, wanted)
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"published {path}: removed {len(wanted)} item(s)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
