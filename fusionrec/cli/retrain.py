"""`fusionrec retrain`: retrain on the event log behind the quality gate, once or on a
schedule (the work is ``fusionrec.retrain``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fusionrec.cli.common import ConfigFile, TextCache, console, fail, load_config, out
from fusionrec.forgotten import RedisUrlOption, UserKeySecretOption, forgotten_users
from model_store.errors import ConfigError, FusionrecError


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
    config: ConfigFile = None,
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
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="train from a fresh model, not warm-started from CURRENT's weights",
        ),
    ] = False,
    cache_dir: TextCache = None,
    redis_url: RedisUrlOption = None,
    user_key_secret: UserKeySecretOption = None,
) -> None:
    """Retrain on the event log; publish and index only when the candidate is not worse than
    CURRENT on the most recent events (the gate); the decision goes to the store's
    retrain.jsonl and, when published, to the manifest."""
    import time

    from fusionrec.retrain import retrain as run_retrain
    from fusionrec.retrain import retrain_config
    from model_store.data.movielens import default_cache_dir

    try:
        period = parse_every(every) if every is not None else None
        load_config(config)  # the file alone is valid: its errors name it
        # CURRENT's recipe, the file's keys on top: the candidate can start from its weights
        overrides = json.loads(config.read_text()) if config is not None else None
        cfg = retrain_config(store, overrides)
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
                warm=not from_scratch,
            )
            verdict = f"published {d.version}" if d.published else "refused; CURRENT kept"
            out.print(f"retrain ({d.start}): {verdict}: {d.reason}", highlight=False)
        except FusionrecError as exc:
            if period is None:
                raise fail(exc) from exc
            console.print(f"[bold red]retrain failed, CURRENT kept:[/] {exc}")
        if period is None:
            return
        time.sleep(period)
