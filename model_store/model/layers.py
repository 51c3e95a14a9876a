"""Layers of the user encoder: a cheaper CPU dropout and a pre-LN causal transformer.

Shapes: B sequences, L positions, D model dimension, H heads.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from model_store.config import ModelConfig


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` with a cheaper mask on the CPU.

    torch's CPU dropout draws one Bernoulli sample per element: with attention dropout that
    was ~15 % of a MovieLens training step on 2 cores. Here one 64-bit random integer gives
    8 bytes, each compared with round(p·256), so p moves to the nearest multiple of 1/256
    (0.2 → 0.199). Other devices use ``F.dropout``. Seeded by torch's global generator.
    """
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    drop = min(max(round(p * 256), 1), 255)
    n = x.numel()
    raw = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
    keep = raw.view(torch.uint8)[:n].view(x.shape) >= drop
    return x * keep * (256.0 / (256 - drop))


class Dropout(nn.Module):
    """:func:`dropout` as a module (``nn.Dropout``'s drop-in)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class Block(nn.Module):
    """Pre-LN transformer block with causal, padding-aware attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim)
        )
        self.drop = Dropout(cfg.dropout)
        self.p_attn = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape  # (B, L, D)
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, l, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if self.training and self.p_attn > 0 and x.device.type == "cpu":
            # the attention map written out, to drop out of it with the cheaper mask
            a = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            a = a.masked_fill(~mask, float("-inf")).softmax(-1)
            att = dropout(a, self.p_attn, True) @ v
        else:
            att = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.p_attn if self.training else 0.0
            )  # (B, H, L, D/H)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, l, d)))
        out: torch.Tensor = x + self.drop(self.mlp(self.ln2(x)))
        return out

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``forward(x, mask)[:, -1:]`` computing only the last position's query, attention
        output and MLP (keys and values still cover every position) → (B, 1, D)."""
        b, l, d = x.shape
        h = self.ln1(x)
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(h[:, -1:], w[:d], bias[:d])  # (B, 1, D)
        k, v = torch.split(F.linear(h, w[d:], bias[d:]), d, dim=-1)  # (B, L, D) each
        hd = d // self.n_heads
        q = q.view(b, 1, self.n_heads, hd).transpose(1, 2)
        k, v = (t.view(b, l, self.n_heads, hd).transpose(1, 2) for t in (k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, -1:])
        x = x[:, -1:] + self.proj(att.transpose(1, 2).reshape(b, 1, d))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class UserEncoder(nn.Module):
    """Causal self-attention over the last L history item vectors → one vector per position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = Dropout(cfg.dropout)
        self.ln_in = nn.LayerNorm(cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(cfg.dim)

    def forward(
        self, seq: torch.Tensor, pad: torch.Tensor, *, last_only: bool = False
    ) -> torch.Tensor:
        """seq (B, L, D) item vectors, left padded; pad (B, L) True at padding → (B, L, D).

        ``last_only`` (inference): only the last position's output → (B, 1, D); the final
        block then computes one query instead of L (the user vector needs no other).
        """
        l = seq.shape[1]
        pos = torch.arange(l, device=seq.device) + (self.pos.num_embeddings - l)
        x = self.drop(self.ln_in(seq + self.pos(pos)))
        causal = torch.ones(l, l, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(l, dtype=torch.bool, device=seq.device)
        # a query may see earlier non-padding keys; padding queries see themselves (no NaN)
        mask = (causal & ~pad[:, None, :]) | eye  # (B, L, L)
        mask = mask[:, None]  # (B, 1, L, L)
        blocks = [cast(Block, b) for b in self.blocks]
        for n, block in enumerate(blocks):
            if last_only and n == len(blocks) - 1 and not self.training:
                x = block.forward_last(x, mask)
            else:
                x = block(x, mask)
        if last_only:
            x = x[:, -1:]
        out: torch.Tensor = self.ln_out(x)
        return out
