"""The band-matrix path of LaConv's dynamic convolution (Eq. 2), for small feature maps.

Internal to :mod:`langground.ops.dynamic_conv`, which decides when this path runs (``_path``).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

# On small maps (the last stages: 13x13 at 416^2, 7x7 at 224^2) an offset's op moves only a few thousand
# pixels per group, so the offset loop is bound by per-op cost. There Eq. 2 is instead, per sample and
# group, one matrix product ``out_g (C/g x HW) = x_g (C/g x HW) @ M_g (HW x HW)`` with the kernels laid on
# the band ``M_g[p + shift_o, p] = W[g, o, p]``: ~HW/k^2 more multiply-adds, but at GEMM speed, and
# three ops per chunk of groups instead of ~k^2 per pass. Backward: ``grad_x = grad_out @ M^T``,
# ``grad_M = x^T @ grad_out`` read back along the same band. ``M`` has ``m`` margin rows above and below,
# so every tap - including those that read padding - lands in ``M`` with one strided multiply by the
# validity mask: out-of-image rows fall into the margins, and taps that wrap into the neighbouring image
# row write 0 to an entry no valid tap uses (true while W > 2p). Chunks of groups keep ``M`` under
# ``BAND_BUDGET`` x the output.
BAND_MAX_PIXELS_PER_TAP = 5  # use the band when H*W <= this * k*k (measured crossover ~6-10)
BAND_BUDGET = 1.5  # largest band buffer, in units of the output tensor


def band_margin(k: int, d: int, w: int) -> int:
    p = d * (k - 1) // 2
    return p * w + p


@lru_cache(maxsize=64)
def _band_mask(k: int, d: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(k, k, H, W)``: 1 where tap ``(a, b)`` at output pixel ``(i, j)`` reads inside the image."""
    p = d * (k - 1) // 2
    shift = torch.arange(k, device=device) * d - p
    rows = (torch.arange(h, device=device).view(1, h) + shift.view(k, 1)).view(k, 1, h, 1)
    cols = (torch.arange(w, device=device).view(1, w) + shift.view(k, 1)).view(1, k, 1, w)
    return ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).to(dtype)


class _Band:
    """Views of one call of the band path: groups in chunks of ``chunk``, one sample at a time."""

    def __init__(self, shape: tuple[int, ...], g: int, k: int, d: int, interleaved: bool, ref: Tensor):
        n, c, h, w = shape
        self.n, self.c, self.h, self.w, self.g, self.k, self.d = n, c, h, w, g, k, d
        self.cg, self.hw, self.m = c // g, h * w, band_margin(k, d, w)
        self.rows = self.hw + 2 * self.m
        self.chunk = max(1, min(g, int(BAND_BUDGET * c // self.rows)))
        self.interleaved = interleaved
        self.mask = _band_mask(k, d, h, w, ref.dtype, ref.device)
        # zeroed once: chunks rewrite every band entry, so the rest stays 0 (and the margins finite)
        self.buf = torch.zeros(self.chunk, self.rows, self.hw, dtype=ref.dtype, device=ref.device)

    def chunks(self):
        for n in range(self.n):
            for g0 in range(0, self.g, self.chunk):
                yield n, g0, min(self.chunk, self.g - g0)

    def maps(self, t: Tensor, n: int, g0: int, gc: int) -> Tensor:
        """(gc, C/g, HW) channel matrices of groups g0.. of sample n of a NCHW-contiguous tensor."""
        hw, cg = self.hw, self.cg
        if self.interleaved:  # channel = i*g + grp
            size, stride, off = (gc, cg, hw), (hw, self.g * hw, 1), g0 * hw
        else:
            size, stride, off = (gc, cg, hw), (cg * hw, hw, 1), g0 * cg * hw
        return t.as_strided(size, stride, t.storage_offset() + n * self.c * hw + off)

    def taps(self, t: Tensor, n: int, g0: int, gc: int) -> Tensor:
        """(gc, k, k, H, W) kernels of groups g0.. of sample n, in ``t``'s own strides."""
        sn, sg, so, sh, sw = t.stride()
        return t.as_strided(
            (gc, self.k, self.k, self.h, self.w),
            (sg, self.k * so, so, sh, sw),
            t.storage_offset() + n * sn + g0 * sg,
        )

    def band(self, gc: int) -> Tensor:
        """Every tap's entry ``M[p + shift + m, p]`` of the buffer as (gc, k, k, H, W)."""
        hw, w, d = self.hw, self.w, self.d
        return self.buf.as_strided(
            (gc, self.k, self.k, self.h, w), (self.rows * hw, d * w * hw, d * hw, w * hw + w, hw + 1), 0
        )

    def matrix(self, gc: int) -> Tensor:
        return self.buf[:gc, self.m : self.m + self.hw]


def band_apply(maps: Tensor, weight: Tensor, k: int, d: int, interleaved: bool, transpose: bool) -> Tensor:
    """``out = maps @ M`` (forward) or ``maps @ M^T`` (grad_x), chunk by chunk."""
    band = _Band(tuple(maps.shape), weight.shape[1], k, d, interleaved, maps)
    out = torch.empty_like(maps)
    for n, g0, gc in band.chunks():
        torch.mul(band.taps(weight, n, g0, gc), band.mask, out=band.band(gc))
        mat = band.matrix(gc)
        torch.bmm(
            band.maps(maps, n, g0, gc),
            mat.transpose(1, 2) if transpose else mat,
            out=band.maps(out, n, g0, gc),
        )
    return out


def band_grad_weight(
    grad_out: Tensor, x: Tensor, weight_shape: list[int], k: int, d: int, interleaved: bool
) -> Tensor:
    """``grad_M = x^T @ grad_out`` per chunk, read back along the band (masked: padding taps get 0)."""
    band = _Band(tuple(x.shape), weight_shape[1], k, d, interleaved, x)
    gw = x.new_empty(weight_shape)
    for n, g0, gc in band.chunks():
        torch.bmm(
            band.maps(x, n, g0, gc).transpose(1, 2), band.maps(grad_out, n, g0, gc), out=band.matrix(gc)
        )
        torch.mul(band.band(gc), band.mask, out=band.taps(gw, n, g0, gc))
    return gw
