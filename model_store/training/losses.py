"""The training losses: L = L_RS + α·L_LM.

* L_RS (``rs_loss``) — next-item prediction at every position of each history window
  (causal), full softmax over the catalog when it has at most ``full_softmax_max_items``
  items, otherwise a sampled softmax over in-batch targets plus uniformly sampled negatives
  with logQ correction. The full softmax leaves out every item the user had before the
  position (not just those in the window): evaluation and serving exclude the whole
  history, so training does too.
* L_LM (``align_loss``) — in ``frozen`` text mode: symmetric InfoNCE aligning each batch
  item's ID embedding with its projected text embedding, so that the text path alone (new
  items) lands near where a trained ID would be. In ``lora`` mode L_LM is the masked-LM
  loss of ``model_store.text.lora``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_store.config import Config
from model_store.model.fused import FusedModel
from model_store.training.prepare import Batch


def rs_loss(
    model: FusedModel, batch: Batch, cfg: Config, sampler_logq: torch.Tensor | None
) -> torch.Tensor:
    """Next-item cross-entropy at every non-padding position.

    With ``train.future_targets`` K > 1 each position also predicts the items 2..K steps
    ahead (a multi-target softmax, the extra targets down-weighted): an order that is
    partly arbitrary (same-second ratings) is then not learnt as if it were exact.
    """
    mask = batch.targets > 0
    y = batch.targets[mask]  # (M,)
    w = batch.weights[mask]
    if sampler_logq is None:
        # every item vector is needed for the softmax: fuse them once, index the windows
        table = model.item_table()  # (N + 1, D)
        h = model.sequence_states(batch.inputs, table)[mask]  # (M, D)
        logits = h @ table[1:].T  # (M, N)
        hist = seen_items(batch, mask, y)
        # in place: the product's backward does not need its output
        logits.index_put_(pairs(hist), logits.new_tensor(MASKED))
        before = earlier_items(batch, mask, y, model.n_items)
        if before is not None:
            logits.masked_fill_(before[:, 1:], MASKED)
        untrained = ~model.has_id[1:]
        if bool(untrained.any()):
            # an item with no training interaction is never a target: as a permanent
            # negative it would only teach the text tower to bury every new item's text
            logits.masked_fill_(untrained, MASKED)
        # −Σ over targets of weight · log-probability: the cross-entropy against a soft
        # target row, without ever building the (M, N) target matrix
        cols, wts = [y], [w]
        future = batch.future[mask] if batch.future is not None else None
        if future is not None and cfg.train.future_weight > 0:
            for j in range(future.shape[1]):
                f = future[:, j]
                keep = f > 0
                keep &= ~(f[:, None] == hist).any(-1)  # already in the history: no target
                if before is not None:
                    keep &= ~before.gather(1, f[:, None]).squeeze(1)
                cols.append(f)
                wts.append(w * keep * (cfg.train.future_weight * cfg.train.future_decay**j))
        targets = torch.stack(cols, 1)  # (M, K)
        weights = torch.stack(wts, 1)
        # (log_softmax's fused backward is ~2x cheaper on the CPU than logsumexp's)
        logp = logits.log_softmax(-1).gather(1, (targets - 1).clamp(min=0))
        out: torch.Tensor = -(weights * logp).sum() / weights.sum()
        return out
    # sampled softmax: in-batch targets + uniform negatives, logQ-corrected
    h = model.sequence_states(batch.inputs)[mask]
    neg = torch.randint(1, model.n_items + 1, (cfg.train.num_negatives,), device=h.device)
    cand = torch.unique(torch.cat([y, neg]))  # (C,)
    logits = h @ model.item_table(cand).T - sampler_logq[cand]  # (M, C)
    logits.masked_fill_(~model.has_id[cand], MASKED)  # untrained items: as above
    pos = torch.searchsorted(cand, y)  # column of each target
    return (F.cross_entropy(logits, pos, reduction="none") * w).sum() / w.sum()


# logit of an item left out of the softmax: finite, so a zero target weight times its
# log-probability stays 0 (−inf would give NaN), and far below any real logit
MASKED = -1e9


def seen_items(batch: Batch, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, L) the items already in the window up to each target position, 0 elsewhere.

    Rows are the M target positions (``mask``). Serving and evaluation exclude the user's
    history, so the softmax is taken over the items the user has not interacted with yet;
    the target itself always stays. At most L items per row rather than an (M, N) mask: the
    catalog can be much wider than a window. The items before the window: ``earlier_items``.
    """
    b, l = batch.inputs.shape
    pos = torch.arange(l, device=y.device)
    rows_b = torch.arange(b, device=y.device)[:, None].expand(b, l)[mask]  # (M,)
    cols_t = pos.expand(b, l)[mask]  # (M,)
    hist = batch.inputs[rows_b]  # (M, L)
    keep = (pos[None, :] <= cols_t[:, None]) & (hist != y[:, None])
    return hist * keep


def earlier_items(
    batch: Batch, mask: torch.Tensor, y: torch.Tensor, n_items: int
) -> torch.Tensor | None:
    """(M, N + 1) bool, True where the item (column = item index) came before the target
    position's window (``batch.earlier``); the target itself and column 0 stay False.

    Evaluation and serving exclude the user's whole history, while a window holds only its
    last L items. One row per window is built and repeated for its positions: a dense mask,
    as a user's earlier items can be many more than L.
    """
    if batch.earlier is None:
        return None
    b, l = batch.inputs.shape
    per_window = torch.zeros(b, n_items + 1, dtype=torch.bool, device=y.device)
    per_window.scatter_(1, batch.earlier, True)
    per_window[:, 0] = False  # padding
    rows_b = torch.arange(b, device=y.device)[:, None].expand(b, l)[mask]  # (M,)
    before = per_window[rows_b]
    before[torch.arange(len(y), device=y.device), y] = False  # the target always stays
    return before


def pairs(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every seen item of ``seen_items`` (columns are item index − 1)."""
    keep = hist > 0
    rows = torch.arange(len(hist), device=hist.device)[:, None].expand_as(hist)[keep]
    return rows, hist[keep] - 1


def align_loss(model: FusedModel, batch: Batch, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between ID embeddings and projected text of the batch's items."""
    idx = torch.unique(batch.targets[batch.targets > 0])
    idx = idx[model.has_id[idx]]
    if len(idx) > 4096:
        idx = idx[torch.randperm(len(idx), device=idx.device)[:4096]]
    z_id = F.normalize(model.items.id_emb(idx), dim=-1)
    z_text = F.normalize(model.items.text_part(model.text_emb[idx]), dim=-1)
    logits = z_id @ z_text.T / temperature
    labels = torch.arange(len(idx), device=idx.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
