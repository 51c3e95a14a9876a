"""Warm start: a new model begins from a trained one's weights (``fusionrec retrain``
starts from CURRENT's), item by item for the ID table, so new items grow the table (their
rows start as a fresh model's do) and items gone from the catalog are dropped.

Only parameters are copied, never buffers: the catalog's text embeddings, popularity and
ID flags are those of the new training set. A parameter whose shape differs (another
architecture) is left as initialised and named in the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from model_store.model.fused import FusedModel

ID_TABLE = "items.id_emb.weight"  # row r + 1 is item r of the item list, row 0 padding


@dataclass(frozen=True)
class WarmStart:
    """The weights to start from, and the item id of each ID-table row (after padding)."""

    model: FusedModel
    item_ids: Sequence[str]


@dataclass
class WarmInfo:
    copied: int = 0  # parameters copied whole
    items_kept: int = 0  # ID rows carried over (items in both catalogs)
    items_new: int = 0  # items without a row before
    skipped: list[str] = field(default_factory=list)  # parameters left as initialised

    def describe(self) -> str:
        text = (
            f"warm start: {self.copied} parameters copied, {self.items_kept} item ids kept, "
            f"{self.items_new} new"
        )
        return text + (f"; not copied: {', '.join(self.skipped)}" if self.skipped else "")


def warm_start(model: FusedModel, item_ids: Sequence[str], init: WarmStart) -> WarmInfo:
    """Copy ``init``'s weights into ``model`` (trained on ``item_ids``), in place."""
    info = WarmInfo()
    old = dict(init.model.named_parameters())
    old_row = {item: r + 1 for r, item in enumerate(init.item_ids)}
    pairs = [(r + 1, old_row[i]) for r, i in enumerate(item_ids) if i in old_row]
    info.items_kept, info.items_new = len(pairs), len(item_ids) - len(pairs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            src = old.get(name)
            if src is None:
                info.skipped.append(name)
            elif name == ID_TABLE and src.shape[1:] == param.shape[1:]:
                if pairs:
                    dst = torch.tensor([p[0] for p in pairs], device=param.device)
                    rows = torch.tensor([p[1] for p in pairs], device=src.device)
                    param[dst] = src[rows].to(param.device, param.dtype)
                info.copied += 1
            elif src.shape == param.shape:
                param.copy_(src.to(param.device, param.dtype))
                info.copied += 1
            else:
                info.skipped.append(name)
    return info
