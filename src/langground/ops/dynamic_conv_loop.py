"""The offset loop of LaConv's dynamic convolution (Eq. 2): the ``flat`` and ``rows`` paths.

Internal to :mod:`langground.ops.dynamic_conv` (its module notes explain the design); the caller picks the
path (``"band"``, ``"flat"`` or ``"rows"``) and passes it in. ``"band"`` is handed on to
:mod:`langground.ops.dynamic_conv_band`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from langground.ops.dynamic_conv_band import band_apply, band_grad_weight

REDUCED = (torch.bfloat16, torch.float16)
# Up to this many channels per group grad_W accumulates channel by channel (no scratch, no sum pass).
_CHANNEL_LOOP_MAX = 4

Window = tuple[int, int, int, int, int, int]  # (offset o, dy, dx, first output pixel, rows, cols)


@lru_cache(maxsize=256)
def _windows(k: int, d: int, h: int, w: int, flat: bool) -> tuple[Window, ...]:
    """Per kernel offset ``o = a*k + b`` the output window it updates: ``(o, dy, dx, start, rows, cols)``.

    Output pixel ``(i, j)`` reads input pixel ``(i + dy, j + dx)``. ``start`` is the window's first output
    pixel as a flat index ``i*w + j``; a window is ``rows`` runs of ``cols`` pixels, ``w`` apart. Offsets
    whose every source pixel is padding are dropped. The centre offset comes first and covers the whole
    map, so it initialises the accumulators. ``flat``: one run (``rows == 1``) from the first valid pixel
    of the first row to the last valid pixel of the last row; the wrapped pixels in between must be masked.
    """
    p = d * (k - 1) // 2
    centre = (k * k) // 2
    out = [(centre, 0, 0, 0, 1, h * w) if flat else (centre, 0, 0, 0, h, w)]
    for a in range(k):
        for b in range(k):
            o = a * k + b
            if o == centre:
                continue
            dy, dx = a * d - p, b * d - p
            i0, i1, j0, j1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
            if i0 >= i1 or j0 >= j1:
                continue
            if flat:
                start = i0 * w + j0
                out.append((o, dy, dx, start, 1, (i1 - 1) * w + j1 - start))
            else:
                out.append((o, dy, dx, i0 * w + j0, i1 - i0, j1 - j0))
    return tuple(out)


class _Step(NamedTuple):
    """Everything one kernel offset needs, as ``as_strided`` arguments (offsets relative to the base)."""

    o: int  # kernel offset a*k + b
    src: int  # first source pixel (flat index) = dst + dy*W + dx
    dst: int  # first output pixel
    size: tuple[int, ...]  # channel window (N, g, C/g, rows, cols) or (N, C/g, g, rows, cols)
    stride: tuple[int, ...]  # of a NCHW-contiguous map
    k_size: tuple[int, ...]  # kernel slice (N, g, rows, cols)
    k_stride: tuple[int, ...]  # ... in the kernel tensor's own strides
    k_off: int
    kb_stride: tuple[int, ...]  # kernel slice broadcast to ``size`` (stride 0 over a group's channels)
    buf_stride: tuple[int, ...]  # compact (N, g, rows, cols) scratch copy of the slice ...
    bufb_stride: tuple[int, ...]  # ... and its broadcast to ``size``
    gw_stride: tuple[int, ...]  # (N, g, rows, cols) window of a contiguous (N, g, k*k, H, W) gradient
    gw_off: int
    chan_stride: tuple[int, ...]  # one channel per group, (N, g, rows, cols): channel i at + i*chan_step
    chan_step: int
    mask: Tensor | None  # column mask of a flat window with a column shift (wrapped pixels -> 0)
    compact: bool  # the slice goes through the scratch copy (masked, or strided pixels)


@lru_cache(maxsize=256)
def _plan(
    shape: tuple[int, int, int, int],
    g: int,
    k: int,
    d: int,
    interleaved: bool,
    k_strides: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    flat: bool,
) -> tuple[_Step, ...]:
    """The per-offset view arguments of one call geometry (cached: a network reuses a few shapes)."""
    n, c, h, w = shape
    cg, hw, kk = c // g, h * w, k * k
    sn, sg, so, _, sw = k_strides
    masks = None
    if flat:  # masks[b, q] = 1 if flat pixel q shifted by column offset b*d - p stays in its row
        col = torch.arange(hw, device=device) % w
        src = col.unsqueeze(0) + (torch.arange(k, device=device).unsqueeze(1) * d - d * (k - 1) // 2)
        masks = ((src >= 0) & (src < w)).to(dtype)
    steps = []
    for o, dy, dx, start, rows, cols in _windows(k, d, h, w, flat):
        if interleaved:  # channel = i*g + grp
            size, stride = (n, cg, g, rows, cols), (c * hw, g * hw, hw, w, 1)
            kb, bufb = (sn, 0, sg, w * sw, sw), (g * rows * cols, 0, rows * cols, cols, 1)
            chan, step = (c * hw, hw, w, 1), g * hw
        else:  # channel = grp*cg + i
            size, stride = (n, g, cg, rows, cols), (c * hw, cg * hw, hw, w, 1)
            kb, bufb = (sn, sg, 0, w * sw, sw), (g * rows * cols, rows * cols, 0, cols, 1)
            chan, step = (c * hw, cg * hw, w, 1), hw
        mask = masks[o % k, start : start + cols] if flat and dx != 0 else None
        steps.append(
            _Step(
                o=o,
                src=start + dy * w + dx,
                dst=start,
                size=size,
                stride=stride,
                k_size=(n, g, rows, cols),
                k_stride=(sn, sg, w * sw, sw),
                k_off=o * so + start * sw,
                kb_stride=kb,
                buf_stride=(g * rows * cols, rows * cols, cols, 1),
                bufb_stride=bufb,
                gw_stride=(g * kk * hw, kk * hw, w, 1),
                gw_off=o * hw + start,
                chan_stride=chan,
                chan_step=step,
                mask=mask,
                compact=mask is not None or sw != 1,
            )
        )
    return tuple(steps)


def _steps(
    t: Tensor, weight: Tensor | None, g: int, k: int, d: int, interleaved: bool, flat: bool
) -> tuple[_Step, ...]:
    n, c, h, w = t.shape
    k_strides = weight.stride() if weight is not None else (g * k * k * h * w, k * k * h * w, h * w, w, 1)
    return _plan((n, c, h, w), g, k, d, interleaved, k_strides, t.dtype, t.device, flat)


def _kernel_slice(weight: Tensor, s: _Step, buf: Tensor) -> Tensor:
    """Kernel slice of one offset broadcast over each group's channels, ready for ``addcmul_``.

    Flat windows with a column shift multiply it by the column mask (into ``buf``) so the pixels that wrap
    into the next row add zero; strided slices (kernels from a channels-last conv) are compacted into
    ``buf`` as well, because one strided operand slows the whole op down.
    """
    base = weight.storage_offset() + s.k_off
    if not s.compact:
        return weight.as_strided(s.size, s.kb_stride, base)
    src = weight.as_strided(s.k_size, s.k_stride, base)
    dst = buf.as_strided(s.k_size, s.buf_stride, 0)
    if s.mask is None:
        dst.copy_(src)
    else:
        torch.mul(src, s.mask, out=dst)
    return buf.as_strided(s.size, s.bufb_stride, 0)


def _flattenable(t: Tensor) -> bool:
    """Pixels addressable as one flat index (contiguous and channels-last kernels both are)."""
    return t.stride(-2) == t.shape[-1] * t.stride(-1)


def is_channels_last(t: Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def accumulate(
    maps: Tensor, weight: Tensor, k: int, d: int, interleaved: bool, transpose: bool, path: str
) -> Tensor:
    """``out[win] += maps[win + shift] * W_o[win]`` (forward) or, ``transpose``d,
    ``out[win + shift] += maps[win] * W_o[win]`` (grad_x): the offset loop shared by both."""
    fmt = torch.channels_last if is_channels_last(maps) else torch.contiguous_format
    maps = maps.contiguous()  # channels-last -> NCHW copy (see the module notes)
    if not _flattenable(weight):
        weight = weight.contiguous()
    n, c, h, w = maps.shape
    g = weight.shape[1]
    if path == "band":
        out = band_apply(maps, weight, k, d, interleaved, transpose)
        return out.contiguous(memory_format=fmt) if fmt is torch.channels_last else out
    acc_dtype = torch.float32 if maps.dtype in REDUCED else maps.dtype
    out = torch.empty(maps.shape, dtype=acc_dtype, device=maps.device)
    buf = weight.new_empty(n * g * h * w)
    base = maps.storage_offset()
    for idx, s in enumerate(_steps(maps, weight, g, k, d, interleaved, path == "flat")):
        kv = _kernel_slice(weight, s, buf)
        mv = maps.as_strided(s.size, s.stride, base + (s.dst if transpose else s.src))
        ov = out.as_strided(s.size, s.stride, s.src if transpose else s.dst)
        if idx == 0 and acc_dtype == maps.dtype:
            torch.mul(mv, kv, out=ov)  # the centre window covers every pixel: no zero fill needed
        else:
            if idx == 0:
                out.zero_()  # reduced precision: addcmul_ into float32 forms each product in float32
            ov.addcmul_(mv, kv)
    out = out.to(maps.dtype)
    return out.contiguous(memory_format=fmt) if fmt is torch.channels_last else out


def grad_weight(
    grad_out: Tensor,
    x: Tensor,
    weight_shape: list[int],
    kernel_size: int,
    dilation: int,
    interleaved: bool,
    path: str,
) -> Tensor:
    """``grad_W[:, :, o][win] = sum over the group's channels of grad_out[win] * x[win + shift]``."""
    grad_out, x = grad_out.contiguous(), x.contiguous()
    n, c, h, w = x.shape
    g = weight_shape[1]
    if path == "band":
        return band_grad_weight(grad_out, x, weight_shape, kernel_size, dilation, interleaved)
    gw = x.new_zeros(weight_shape)  # windows skip the padding-only terms: those stay 0
    go_base, x_base = grad_out.storage_offset(), x.storage_offset()
    steps = _steps(x, None, g, kernel_size, dilation, interleaved, path == "flat")
    if c // g <= _CHANNEL_LOOP_MAX and x.dtype not in REDUCED:
        # few channels per group: accumulate channel by channel, no scratch and no reduction pass
        for s in steps:
            gwv = gw.as_strided(s.k_size, s.gw_stride, s.gw_off)
            for i in range(c // g):
                gov = grad_out.as_strided(s.k_size, s.chan_stride, go_base + s.dst + i * s.chan_step)
                xv = x.as_strided(s.k_size, s.chan_stride, x_base + s.src + i * s.chan_step)
                gwv.addcmul_(gov, xv)
            if s.mask is not None:
                gwv.mul_(s.mask)
        return gw
    scratch = torch.empty(x.numel(), dtype=x.dtype, device=x.device)  # products before the channel sum
    sum_dim = 1 if interleaved else 2
    for s in steps:
        prod = scratch.as_strided(s.size, _contiguous_strides(s.size), 0)
        torch.mul(
            grad_out.as_strided(s.size, s.stride, go_base + s.dst),
            x.as_strided(s.size, s.stride, x_base + s.src),
            out=prod,
        )
        gwv = gw.as_strided(s.k_size, s.gw_stride, s.gw_off)
        torch.sum(prod, sum_dim, out=gwv)  # reductions accumulate reduced dtypes in float32
        if s.mask is not None:
            gwv.mul_(s.mask)
    return gw


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for extent in reversed(size):
        strides.append(acc)
        acc *= extent
    return tuple(reversed(strides))
