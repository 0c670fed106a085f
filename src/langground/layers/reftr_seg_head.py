"""The Referring Transformer's RES head (Li & Sigal 2021, "RES Head: a FPN (U-Net type) structure with
residual connections"), shaped like DETR's panoptic mask head, which the released code reuses:

1. :class:`QueryAttentionMap`: the decoded query's multi-head attention over the visual memory, softmax
   over positions, one ``(h, w)`` map per head (no values multiplied);
2. :class:`ReferringMaskHead`: ``[projected C5; visual memory; attention maps]`` at stride 32 -> two
   3x3 conv-GN-ReLU -> three top-down steps: upsample, ADD a 1x1-projected backbone map (C4, C3, C2:
   the residual/lateral connections), 3x3 conv-GN-ReLU -> 1-channel logits at stride 4.

The laterals read only the backbone, so they are computed once per image and shared by its expressions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)  # DETR's 8 groups where they divide


class QueryAttentionMap(nn.Module):
    """``(N, Q, d)`` queries x ``(N, d, h, w)`` memory -> ``(N, Q, heads, h, w)`` softmax maps."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim / heads) ** -0.5
        self.q, self.k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        for m in (self.q, self.k):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        n, d, h, w = memory.shape
        q = self.q(query).view(n, query.shape[1], self.heads, d // self.heads)
        k = self.k(memory.flatten(2).transpose(1, 2)).view(n, h * w, self.heads, d // self.heads)
        logits = torch.einsum("nqhc,nshc->nqhs", q * self.scale, k)
        return logits.softmax(-1).view(n, query.shape[1], self.heads, h, w)


def widths(dim: int) -> list[int]:
    """Channels after the stem and each of the three top-down steps: d/2, d/4, d/8, d/16 (at least 8)."""
    return [max(8, dim // 2**i) for i in range(1, 5)]


class ReferringMaskHead(nn.Module):
    """Top-down conv head, stride 32 -> 4, with lateral additions of C4, C3, C2 (``lateral_channels``)."""

    def __init__(self, dim: int, heads: int, lateral_channels: Sequence[int]):
        super().__init__()
        c = widths(dim)
        cin = 2 * dim + heads
        self.stem = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1),
            _norm(cin),
            nn.ReLU(),
            nn.Conv2d(cin, c[0], 3, padding=1),
            _norm(c[0]),
            nn.ReLU(),
        )
        self.laterals = nn.ModuleList(nn.Conv2d(ch, c[i], 1) for i, ch in enumerate(lateral_channels))
        self.steps = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c[i], c[i + 1], 3, padding=1), _norm(c[i + 1]), nn.ReLU())
            for i in range(3)
        )
        self.out = nn.Conv2d(c[3], 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def lateral_maps(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """The 1x1 projections of C4, C3, C2 (coarse to fine): per image, shareable by its expressions."""
        return [lat(f) for lat, f in zip(self.laterals, feats, strict=True)]

    def forward(self, x: Tensor, laterals: Sequence[Tensor]) -> Tensor:
        """``x`` ``(N, 2d + heads, h, w)`` at stride 32; ``laterals`` per expression (C4, C3, C2 projected)."""
        x = self.stem(x)
        for step, lat in zip(self.steps, laterals, strict=True):
            x = step(lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest"))
        return self.out(x)
