"""Paired statistics (``model_store.stats``), where the evaluation code has always found
them; they live at the bottom layer so that training can use them too (the head-keep rule,
``model_store.training.head``)."""

from __future__ import annotations

from model_store.stats import NOT_WORSE_MARGIN, Paired, paired_bootstrap, per_user, seed_mean

__all__ = ["NOT_WORSE_MARGIN", "Paired", "paired_bootstrap", "per_user", "seed_mean"]
