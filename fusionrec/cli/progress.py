"""Progress of the long commands: rich bars on a terminal, plain lines in a log
(``model_store.progress``), for catalog encoding (`index`) and training (`train`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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

from fusionrec.cli.common import console
from model_store import progress as plain
from model_store.config import Config
from model_store.training.epochs import EpochRow

OnEpoch = Callable[[EpochRow], None]
OnTexts = Callable[[int], None]


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- items/s" if speed is None else f"{speed:,.0f} items/s", style="cyan")


@contextmanager
def encode_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """``advance(n, total)`` of an encoding stage."""
    if not console.is_terminal:
        lines = plain.stage_lines(label)
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
def training_progress(
    cfg: Config, n_items: int, n_interactions: int
) -> Iterator[tuple[OnEpoch, OnTexts]]:
    """``(on_epoch, text_progress)`` of a training: the text-encoding stage, then one line or
    bar step per epoch."""
    if console.is_terminal:
        with _training_bars(cfg, n_items) as callbacks:
            yield callbacks
        return
    previous = [0.0]

    def on_epoch_line(row: EpochRow) -> None:
        plain.emit(row.log_line(cfg.train.epochs, previous[0]))
        previous[0] = row.seconds

    texts = plain.stage_lines("encode item texts", n_items)
    plain.emit(
        f"train {cfg.model.fusion}: {n_interactions:,} interactions, "
        f"{n_items:,} items, up to {cfg.train.epochs} epochs"
    )
    yield on_epoch_line, lambda n: texts(n, None)


@contextmanager
def _training_bars(cfg: Config, n_items: int) -> Iterator[tuple[OnEpoch, OnTexts]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    ) as progress:
        text_task = progress.add_task("encode item texts", total=n_items, info="")
        ep_task = progress.add_task(f"train {cfg.model.fusion}", total=cfg.train.epochs, info="")

        def on_epoch(row: EpochRow) -> None:
            info = f"loss_rs {row.loss_rs:.4f} loss_lm {row.loss_lm:.4f}"
            if "ndcg@10" in row.valid:
                info += (
                    f" | valid ndcg@10 {row.valid['ndcg@10']:.4f} "
                    f"recall@20 {row.valid['recall@20']:.4f}"
                )
            progress.update(ep_task, advance=1, info=info)

        yield on_epoch, lambda n: progress.update(text_task, advance=n)
        progress.update(text_task, completed=n_items)  # all of it when the cache had them
