"""Masked mean and attentive pooling (MCAN-style "AttFlat") of token or pixel sequences."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of ``(B, L, D)`` counting only positions where ``mask`` (B, L) is True."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class AttentionPool(nn.Module):
    """Weights each position by a learned score (``glimpses`` heads), sums, and projects to ``out_dim``.

    ``forward(x: (B, L, D), mask: (B, L) bool or None) -> (B, out_dim)``.
    """

    def __init__(
        self, dim: int, out_dim: int, hidden: int | None = None, glimpses: int = 1, dropout: float = 0.1
    ):
        super().__init__()
        hidden = hidden or dim
        self.glimpses = glimpses
        self.score = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, glimpses)
        )
        self.proj = nn.Linear(dim * glimpses, out_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        logits = self.score(x).float()  # (B, L, G)
        if mask is not None:
            logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        att = torch.softmax(logits, dim=1).to(x.dtype)
        pooled = torch.einsum("blg,bld->bgd", att, x).flatten(1)
        return self.proj(pooled)
