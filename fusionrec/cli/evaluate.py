"""`fusionrec evaluate|ablate|report`: measure bundles and strategies, find their reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import (
    ColdItems,
    ColdSeed,
    ConfigFile,
    console,
    fail,
    load_config,
    metrics_table,
    out,
)
from model_store.errors import ConfigError, FusionrecError


def evaluate(
    store: Annotated[Path, typer.Option()],
    data: Annotated[Path, typer.Option(help="dataset whose interactions are the histories")],
    test: Annotated[Path, typer.Option(help="CSV/Parquet with user_id,item_id targets")],
    version: Annotated[str | None, typer.Option()] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write metrics here")] = None,
    cold_items: ColdItems = 0.0,
    cold_seed: ColdSeed = 0,
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
    config: ConfigFile = None,
    cold_items: ColdItems = 0.1,
    cold_seed: ColdSeed = 0,
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
