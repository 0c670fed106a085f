"""LOC: the 8-channel spatial map of Hu et al. (ECCV 2016) [3] that DMN concatenates to ``I_N`` (Sec. 3.4).

Channel order ``(xmin, ymin, xmax, ymax, xctr, yctr, 1/W, 1/H)`` of each cell in ``[-1, 1]`` canvas
coordinates, as the DMN release's ``generate_spatial_batch``; computed here with tensor ops on the
input's device and dtype (the release builds it in NumPy and moves it to CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LOC_CHANNELS", "spatial_map"]

LOC_CHANNELS = 8


def spatial_map(height: int, width: int, like: Tensor) -> Tensor:
    """``(1, 8, height, width)`` LOC map on ``like``'s device and dtype."""
    xs = torch.arange(width, device=like.device, dtype=like.dtype)
    ys = torch.arange(height, device=like.device, dtype=like.dtype)
    xmin, xmax = xs / width * 2 - 1, (xs + 1) / width * 2 - 1
    ymin, ymax = ys / height * 2 - 1, (ys + 1) / height * 2 - 1
    row = lambda v: v.view(1, width).expand(height, width)  # noqa: E731
    col = lambda v: v.view(height, 1).expand(height, width)  # noqa: E731
    ones = torch.ones(height, width, device=like.device, dtype=like.dtype)
    channels = [
        row(xmin), col(ymin), row(xmax), col(ymax), row((xmin + xmax) / 2), col((ymin + ymax) / 2),
        ones / width, ones / height,
    ]  # fmt: skip
    return torch.stack(channels).unsqueeze(0)
