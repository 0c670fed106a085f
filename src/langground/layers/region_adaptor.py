"""SLAN's region adaptor (Sec. 3.2.3, Algorithm 1, Eq. 1-2): text-guided, coarse-to-fine box regression.

One level ``i`` takes region embeddings ``E^G`` with boxes ``G`` (normalised cxcywh), word embeddings
``E^T`` and a decoder feature map ``F_i``:

1. cross attention both ways (Eq. 1): regions attend to words, words to regions;
2. a neighbourhood of size ``(r_i H_i, r_i W_i)`` (a fraction ``r_i`` of the map's sides) centred on the
   region, split into ``K x K`` cells, each embedded by RoIAlign + average pooling from ``F_i``;
3. ``s_j``: the maximum cosine similarity of cell ``j`` to the (cross-attended) words, softmax-normalised
   over the ``K^2`` cells; the centre moves by the ``s``-weighted cell offsets, ``w, h`` scale by the
   learnable ``p_w, p_h`` (Eq. 2);
4. the region is re-embedded from ``F_i`` at its new box (bilinear RoIAlign + average pooling, written
   with ``grid_sample`` so that the box receives gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align


def cxcywh_to_feature_xyxy(boxes: Tensor, h: int, w: int) -> Tensor:
    """``(..., 4)`` normalised cxcywh -> xyxy in feature-map cells (RoIAlign's coordinates)."""
    cx, cy, bw, bh = boxes.unbind(-1)
    return torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)


def roi_embed(feature: Tensor, boxes: Tensor, rows: Tensor | None = None, output_size: int = 1) -> Tensor:
    """Average-pooled RoIAlign (``output_size`` bins of 2 x 2 bilinear samples, aligned) of ``(P, M, 4)``
    normalised cxcywh boxes on the maps ``feature`` ``(B, D, H, W)``; box row ``p`` reads map ``rows[p]``
    (default ``p``): ``(P, M, D)``. No copy of the maps per pair: RoIAlign takes a map index per box."""
    p, m = boxes.shape[:2]
    h, w = feature.shape[-2:]
    rows = torch.arange(p, device=boxes.device) if rows is None else rows
    xyxy = cxcywh_to_feature_xyxy(boxes.to(feature.dtype), h, w).reshape(p * m, 4)
    batch = rows.to(feature.dtype).repeat_interleave(m)[:, None]
    pooled = roi_align(feature, torch.cat([batch, xyxy], 1), output_size, 1.0, 2, aligned=True)
    return pooled.mean((2, 3)).reshape(p, m, -1)


def sample_embed(feature: Tensor, boxes: Tensor, rows: Tensor | None = None, points: int = 2) -> Tensor:
    """RoIAlign (output 1x1, ``points`` x ``points`` bilinear samples, aligned) written with ``grid_sample``
    so that gradients reach the boxes (torchvision's ``roi_align`` gives none to them): ``(P, M, D)``."""
    if rows is not None:
        feature = feature.index_select(0, rows)
    b, m = boxes.shape[:2]
    t = (
        torch.arange(points, device=boxes.device, dtype=feature.dtype) + 0.5
    ) / points - 0.5  # in (-0.5, 0.5)
    cx, cy, w, h = (v[..., None] for v in boxes.to(feature.dtype).unbind(-1))
    xs, ys = cx + t * w, cy + t * h  # (B, M, P) sample positions, normalised image coordinates
    grid = torch.stack(torch.broadcast_tensors(xs[..., None, :], ys[..., :, None]), -1)  # (B, M, P, P, 2)
    out = F.grid_sample(feature, grid.reshape(b, m * points, points, 2) * 2 - 1, align_corners=False)
    return out.reshape(b, -1, m, points * points).mean(-1).transpose(1, 2)


def neighbour_grid(k: int) -> Tensor:
    """``(K*K, 2)`` integer offsets ``(a - K//2, b - K//2)`` of cell ``j``: ``a = j // K`` along x,
    ``b = j % K`` along y (Eq. 2's indices)."""
    j = torch.arange(k * k)
    return torch.stack([j // k - k // 2, j % k - k // 2], 1).float()


def neighbour_boxes(boxes: Tensor, ratio: float, k: int) -> tuple[Tensor, Tensor]:
    """The ``K x K`` cells of each region's neighbourhood, ``(B, R, K*K, 4)`` normalised cxcywh, and the
    cell size ``(cw, ch)`` (a neighbourhood of ``ratio`` times the image's sides, centred on the box)."""
    grid = neighbour_grid(k).to(boxes)
    cell = boxes.new_tensor([ratio / k, ratio / k])
    centres = boxes[..., None, :2] + grid * cell  # (B, R, K*K, 2)
    sizes = cell.expand_as(centres)
    return torch.cat([centres, sizes], -1), cell


class CrossAttention(nn.Module):
    """Eq. 1 with multi-head projections, a residual and LayerNorm on each side (regions <-> words)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.r2w = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.w2r = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_r, self.norm_w = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(
        self, regions: Tensor, region_keep: Tensor, words: Tensor, word_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        r = self.r2w(regions, words, words, key_padding_mask=~word_mask, need_weights=False)[0]
        t = self.w2r(words, regions, regions, key_padding_mask=~region_keep, need_weights=False)[0]
        return self.norm_r(regions + r), self.norm_w(words + t)


class AdaptorLevel(nn.Module):
    """One level of Algorithm 1 (lines 4-11)."""

    def __init__(self, dim: int, heads: int, ratio: float, k: int = 3, sim_temperature: float = 0.1):
        super().__init__()
        if k < 1 or k % 2 == 0:
            raise ValueError(f"neighbourhood K={k} must be odd (a centre cell)")
        self.ratio, self.k, self.sim_temperature = float(ratio), int(k), float(sim_temperature)
        self.attention = CrossAttention(dim, heads)
        self.cell_proj = nn.Linear(dim, dim)  # F_i cells -> the words' space
        self.p_w = nn.Parameter(torch.ones(()))  # Eq. 2's learnable scales (start: keep the size)
        self.p_h = nn.Parameter(torch.ones(()))
        self.embed_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def offsets(self, cells: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """``s_j`` (Eq. 2): max cosine similarity of each cell ``(B, R, J, D)`` to the words ``(B, W, D)``,
        softmax over the ``J = K^2`` cells; ``(B, R, J)``."""
        sim = torch.einsum("brjd,bwd->brjw", F.normalize(cells, dim=-1), F.normalize(words, dim=-1))
        sim = sim.masked_fill(~word_mask[:, None, None, :], -2.0)
        return (sim.amax(-1) / self.sim_temperature).softmax(-1)

    def forward(
        self,
        regions: Tensor,
        region_keep: Tensor,
        boxes: Tensor,
        words: Tensor,
        word_mask: Tensor,
        feature: Tensor,
        rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> ``(regions E_i^G, words E_i^T, boxes G_i, s (P, R, K^2))``; pair ``p`` reads map ``rows[p]``."""
        regions, words = self.attention(regions, region_keep, words, word_mask)  # Eq. 1 (line 4)
        cells, cell = neighbour_boxes(boxes, self.ratio, self.k)  # line 5
        b, r, j, _ = cells.shape
        cell_emb = self.cell_proj(
            roi_embed(feature, cells.reshape(b, r * j, 4), rows).reshape(b, r, j, -1)
        )  # line 6
        s = self.offsets(cell_emb, words, word_mask)  # line 7
        grid = neighbour_grid(self.k).to(boxes)
        delta = torch.einsum("brj,jc->brc", s, grid) * cell  # Eq. 2: sum_j s_j (cell size) (offset index)
        centre = (boxes[..., :2] + delta).clamp(0.0, 1.0)
        size = (boxes[..., 2:] * torch.stack([self.p_w, self.p_h]).abs()).clamp(1e-3, 1.0)
        new_boxes = torch.cat([centre, size], -1)  # line 10
        # line 11; differentiable in the box, so ITM / MLM train the offsets and p_w, p_h
        regions = self.norm(regions + self.embed_proj(sample_embed(feature, new_boxes, rows)))
        return regions, words, new_boxes, s


class RegionAdaptor(nn.Module):
    """``L`` cascaded :class:`AdaptorLevel` (Algorithm 1's loop), level ``i`` on pyramid feature ``F_i``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ratios: tuple[float, ...] = (1.0, 0.5, 0.25),
        k: int = 3,
        sim_temperature: float = 0.1,
    ):
        super().__init__()
        self.levels = nn.ModuleList(AdaptorLevel(dim, heads, r, k, sim_temperature) for r in ratios)

    def forward(
        self,
        regions: Tensor,
        region_keep: Tensor,
        boxes: Tensor,
        words: Tensor,
        word_mask: Tensor,
        features: list[Tensor],
        rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """-> ``(E_out^G, E_out^T, [G_1, ..., G_L])``; pair ``p`` reads the maps of image ``rows[p]``."""
        history = []
        for level, feature in zip(self.levels, features, strict=True):
            regions, words, boxes, _ = level(regions, region_keep, boxes, words, word_mask, feature, rows)
            history.append(boxes)
        return regions, words, history


__all__ = [
    "AdaptorLevel",
    "CrossAttention",
    "RegionAdaptor",
    "cxcywh_to_feature_xyxy",
    "neighbour_boxes",
    "neighbour_grid",
    "roi_embed",
    "sample_embed",
]
