"""What an epoch leaves behind (``EpochRow``) and which epoch is kept (``BestEpoch``)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpochRow:
    """One epoch: its mean losses, the validation metrics of its (averaged) weights when
    there is a holdout, and the seconds since training began."""

    epoch: int
    loss_rs: float
    loss_lm: float
    valid: dict[str, float] = field(default_factory=dict)  # metric → value ("users" left out)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The manifest's form (``metrics.history``): epoch, loss_rs, loss_lm, one
        ``valid_<metric>`` per metric, seconds."""
        return {
            "epoch": float(self.epoch),
            "loss_rs": self.loss_rs,
            "loss_lm": self.loss_lm,
            **{f"valid_{k}": v for k, v in self.valid.items()},
            "seconds": self.seconds,
        }

    def log_line(self, max_epochs: int, previous_seconds: float) -> str:
        """The epoch as a log line (``model_store.progress``): loss parts, validation metrics,
        epoch seconds, an ETA (the remaining epochs at the mean epoch time so far; early
        stopping usually ends sooner)."""
        losses = f"loss_rs {self.loss_rs:.4f} loss_lm {self.loss_lm:.4f}"
        valid = " ".join(f"valid_{k} {v:.4f}" for k, v in self.valid.items())
        total, epoch = self.seconds, self.epoch
        left = max(0, max_epochs - epoch)
        eta = f"ETA <= {total / epoch * left:.0f} s" if left and epoch else "last epoch"
        parts = [f"epoch {epoch}/{max_epochs}", losses, valid]
        parts += [f"epoch {total - previous_seconds:.1f} s", f"elapsed {total:.1f} s", eta]
        return " | ".join(p for p in parts if p)


@dataclass
class Candidate:
    """An epoch that may be kept: its weights (``Loop.snapshot``) and its row."""

    epoch: int
    snapshot: dict[str, Any]
    row: EpochRow


@dataclass
class BestEpoch:
    """Chooses the epoch whose validation score, averaged over ``window`` epochs centred on
    it, is highest (one epoch's figure over ~1,000 users is noisy); an epoch is judged once
    the ``window // 2`` epochs after it are in. ``patience`` judged epochs without a new best
    stop training (None: never). A warm start's starting weights come first as epoch 0, a
    candidate like the others: epochs that only make them worse are not kept."""

    window: int
    patience: int | None
    initial: dict[str, Any]
    scores: list[float] = field(default_factory=list)
    best_score: float = -1.0
    best: Candidate | None = None
    # (position in ``scores``, candidate) of the epochs not judged yet
    _waiting: collections.deque[tuple[int, Candidate]] = field(default_factory=collections.deque)
    _bad: int = 0

    def add(self, candidate: Candidate, score: float) -> bool:
        """Record an epoch; True when training should stop."""
        self.scores.append(score)
        self._waiting.append((len(self.scores) - 1, candidate))
        if len(self._waiting) <= self.window // 2:
            return False
        if self._judge(self._waiting.popleft()):
            self._bad = 0
            return False
        self._bad += 1
        return self.patience is not None and self._bad >= self.patience

    def finish(self) -> Candidate:
        """Judge the last epochs by the neighbours they have; the chosen one."""
        while self._waiting:
            self._judge(self._waiting.popleft())
        return self.best or Candidate(0, self.initial, EpochRow(0, 0.0, 0.0))

    def _judge(self, waiting: tuple[int, Candidate]) -> bool:
        at, c = waiting
        half = self.window // 2
        near = self.scores[max(0, at - half) : at + half + 1]
        smoothed = sum(near) / len(near)
        if smoothed > self.best_score:
            self.best_score, self.best = smoothed, c
            return True
        return False
