"""2-D sine position embedding (Transformer-style, on normalized coordinates).

LaConv adds it to the queries of its parameter generator. The paper mentions no position embedding; the
released code (``layers/laconv.py`` ``PositionEmbeddingSine``, DETR's) embeds raw 1-based row/column
indices at full resolution. Ours embeds normalised cell centres, so it does not depend on the map size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine2d(nn.Module):
    """``(1, dim, h, w)`` sine/cosine embedding of normalized (y, x) coordinates; no parameters.

    Half of the channels encode y and half x, each as sin/cos pairs at geometric frequencies
    (``temperature ** (2i / (dim / 2))``). Coordinates are cell centres scaled to ``[0, 2*pi]`` so the
    embedding does not depend on the feature-map resolution. The result is cached per (h, w, device, dtype).
    """

    def __init__(self, dim: int, temperature: float = 10000.0):
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"position embedding dim must be a multiple of 4, got {dim}")
        self.dim = dim
        self.temperature = temperature
        self._cache: dict[tuple, Tensor] = {}

    def forward(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (h, w, device, dtype)
        pos = self._cache.get(key)
        if pos is None:
            pos = self._build(h, w, device).to(dtype)
            if not torch.compiler.is_compiling():
                self._cache = {key: pos}
        return pos

    def _build(self, h: int, w: int, device: torch.device) -> Tensor:
        half = self.dim // 2
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
        i = torch.arange(half, device=device, dtype=torch.float32)
        freq = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)
        py = y[:, None] / freq  # (h, half)
        px = x[:, None] / freq  # (w, half)
        py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
        px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)), dim=2
        )  # (h, w, dim)
        return pos.permute(2, 0, 1).unsqueeze(0).contiguous()
