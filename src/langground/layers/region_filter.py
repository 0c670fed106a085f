"""SLAN's region filter (Sec. 3.2.2): keep the salient region proposals of a DETR-style detector.

(a) normalise the saliency scores so that the largest is 1, (b) sort them in descending order, (c) keep
the regions with ``S_i > h``, (d) at most the first ``T``; the kept embeddings are weighted by their
scores. Table 6's settings: no filter (``top_k=None, threshold=None``), top-K only, top-K + threshold.

Shapes stay static (ONNX, batching): the output always has ``T`` slots (``N`` without a top-K), sorted;
slots that fail the threshold carry ``keep=False`` and weight 0. The best region always passes
(its normalised score is 1 > h for h < 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class FilteredRegions:
    """The filter's output, ``T`` slots per image, most salient first.

    Attributes:
        index: ``(B, T)`` indices of the kept proposals in the detector's ``N``.
        scores: ``(B, T)`` normalised saliencies (max 1), 0 on dropped slots.
        keep: ``(B, T)`` bool, True where the slot holds a kept region.
    """

    index: Tensor
    scores: Tensor
    keep: Tensor

    def gather(self, x: Tensor) -> Tensor:
        """``x`` ``(B, N, ...)`` -> the kept slots ``(B, T, ...)``."""
        idx = self.index.reshape(*self.index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, idx)


def normalise_saliency(saliency: Tensor) -> Tensor:
    """Step (a): ``(B, N)`` non-negative saliencies divided by each row's maximum (so the max is 1)."""
    return saliency / saliency.amax(dim=1, keepdim=True).clamp_min(1e-12)


def filter_regions(
    saliency: Tensor, top_k: int | None = 10, threshold: float | None = 0.5
) -> FilteredRegions:
    """Steps (a)-(d) on ``(B, N)`` non-negative saliencies (sigmoid outputs); see the module docstring."""
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise ValueError(f"region filter threshold {threshold} must lie in [0, 1)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"region filter top_k {top_k} must be >= 1")
    s = normalise_saliency(saliency)  # (a)
    t = s.shape[1] if top_k is None else min(int(top_k), s.shape[1])
    scores, index = s.topk(t, dim=1, sorted=True)  # (b) + (d): the first T in descending order
    keep = scores > threshold if threshold is not None else torch.ones_like(scores, dtype=torch.bool)  # (c)
    keep[:, 0] = True  # the best region's normalised score is 1 (guards 0/0 rows)
    return FilteredRegions(index, scores * keep.to(scores.dtype), keep)


__all__ = ["FilteredRegions", "filter_regions", "normalise_saliency"]
