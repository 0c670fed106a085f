"""SLAN's detector and vision decoder (Sec. 3.2, 3.2.1): region proposals with embeddings and saliency,
and the pyramid ``F_1..F_L`` the region adaptor reads.

- :class:`RegionDetector`: DETR-style: ``N`` learned queries, a Transformer decoder over the flattened
  feature map ``V`` (+ 2-D sine positions); per query a region embedding (the decoder output), a box
  (3-layer MLP -> sigmoid, normalised cxcywh) and a saliency score (linear -> sigmoid), which replaces
  DETR's class prediction ("region saliency prediction").
- :class:`VisionDecoder`: top-down pyramid from ``V``: ``F_1`` at ``V``'s stride, each next level 2x finer
  (upsample + 3x3 conv, plus a lateral 1x1 projection of the backbone's map at that stride when the
  backbone has one), coarse-to-fine as the adaptor's neighbourhoods shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.layers.position import PositionEmbeddingSine2d


@dataclass
class Proposals:
    """``embeddings (B, N, D)``, ``boxes (B, N, 4)`` normalised cxcywh, ``saliency (B, N)`` in (0, 1)."""

    embeddings: Tensor
    boxes: Tensor
    saliency: Tensor


class RegionDetector(nn.Module):
    def __init__(self, dim: int, queries: int, layers: int, heads: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.queries = nn.Embedding(queries, dim)
        self.pos = PositionEmbeddingSine2d(dim)
        layer = nn.TransformerDecoderLayer(dim, heads, ffn, dropout, batch_first=True, norm_first=False)
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
        self.box_head = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4)
        )
        self.saliency_head = nn.Linear(dim, 1)
        nn.init.constant_(self.box_head[-1].bias, 0.0)
        nn.init.constant_(self.box_head[-1].weight, 0.0)
        nn.init.normal_(self.queries.weight, std=1.0)
        # distinct starting boxes (DETR's first boxes are near-identical; ours are spread over a grid)
        side = int(queries**0.5 + 0.999)
        j = torch.arange(queries)
        grid = torch.stack([(j % side + 0.5) / side, (j // side + 0.5) / side], 1)
        init = torch.cat([grid, grid.new_full((queries, 2), 1.5 / side)], 1).clamp(1e-3, 1 - 1e-3)
        self.register_buffer("reference", torch.log(init / (1 - init)), persistent=False)

    def forward(self, v: Tensor) -> Proposals:
        b, d, h, w = v.shape
        memory = (v + self.pos(h, w, v.device, v.dtype)).flatten(2).transpose(1, 2)
        out = self.decoder(self.queries.weight[None].expand(b, -1, -1).to(v.dtype), memory)
        boxes = (self.box_head(out) + self.reference.to(out.dtype)).sigmoid()
        return Proposals(out, boxes, self.saliency_head(out).squeeze(-1).sigmoid())


class VisionDecoder(nn.Module):
    def __init__(self, dim: int, levels: int, lateral_channels: list[int | None]):
        super().__init__()
        self.levels = levels
        self.smooth = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in range(levels))
        self.lateral = nn.ModuleList(
            nn.Identity() if c is None else nn.Conv2d(c, dim, 1)
            for c in lateral_channels[: max(levels - 1, 0)]
        )
        self.has_lateral = [c is not None for c in lateral_channels[: max(levels - 1, 0)]]

    def forward(self, v: Tensor, laterals: list[Tensor | None]) -> list[Tensor]:
        """``v`` ``(B, D, h, w)`` and the backbone's finer maps (``laterals[i]`` at 2^(i+1) x ``v``'s size,
        or None) -> ``[F_1, ..., F_L]``."""
        feats = [F.relu(self.smooth[0](v))]
        for i in range(1, self.levels):
            x = F.interpolate(feats[-1], scale_factor=2.0, mode="nearest")
            if self.has_lateral[i - 1] and laterals[i - 1] is not None:
                x = x + self.lateral[i - 1](laterals[i - 1])
            feats.append(F.relu(self.smooth[i](x)))
        return feats


__all__ = ["Proposals", "RegionDetector", "VisionDecoder"]
