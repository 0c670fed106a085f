"""Pixel packing (Sec. 3.2): s x s neighbourhoods become one token, and the inverse recovery.

Channel ``c * s * s + dy * s + dx`` of a token holds channel ``c`` of pixel ``(dy, dx)`` of its block: the
order of the released code's ``pixel_packing`` / ``token_recovering`` (``layers/laconv.py``); the paper only
says each token is the concatenation of its ``s x s`` local features.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pixel_pack(x: Tensor, s: int) -> tuple[Tensor, tuple[int, int]]:
    """``(B, C, H, W) -> (B, C*s*s, ceil(H/s), ceil(W/s))``: each token concatenates its s x s features.

    Sizes that are not multiples of ``s`` are zero-padded on the bottom/right; the returned original
    ``(H, W)`` lets :func:`pixel_unpack` crop the padding away again.
    """
    h, w = x.shape[-2:]
    if s == 1:
        return x, (h, w)
    ph, pw = (-h) % s, (-w) % s
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return F.pixel_unshuffle(x, s), (h, w)


def pixel_unpack(x: Tensor, s: int, size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`pixel_pack`: ``(B, C*s*s, h, w) -> (B, C, H, W)`` cropped to ``size``."""
    if s == 1:
        return x
    x = F.pixel_shuffle(x, s)
    h, w = size
    if x.shape[-2:] != (h, w):
        x = x[..., :h, :w]
    return x
