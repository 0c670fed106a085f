"""LaConv's language-guided dynamic depth-wise convolution, Eq. 2 of the LaConvNet paper.

``out[n, c, i, j] = sum_{a,b} W[n, grp(c), a*k + b, i, j] * x_pad[n, c, i + a*d - p, j + b*d - p]``
with ``p = d*(k-1)/2`` ("same" zero padding, stride 1, odd ``k``): a depth-wise convolution whose
``k x k`` kernel differs at every position, for each of ``g`` channel groups, for every sample.

Channel groups: ``grp(c) = c // (C/g)`` is the paper's split ``[X^1 ... X^g]`` (contiguous, default);
``interleaved=True`` uses ``grp(c) = c % g``, the order of the authors' CUDA kernel, so their released
checkpoints map in without permuting channels.

Three implementations share one signature ``(x, weight, kernel_size, dilation=1, interleaved=False)``:

* :func:`laconv` - what models call: the Triton kernel for CUDA tensors when ``triton`` imports, else
  the fast path.
* :func:`laconv_fast` - pure PyTorch; never materialises the ``k*k``-times larger unfolded tensor, in
  forward or backward. It loops over the ``k*k`` kernel offsets and accumulates shifted-input x
  kernel-slice products in place (``addcmul_``), the slice broadcast over the ``C/g`` channels of its
  group. Padding is never built: each offset touches only the window of output pixels whose source pixel
  is inside the image (the rest would read zeros). Backward saves only ``x`` and ``weight``: ``grad_x`` is
  the same loop with the shift reversed (scatter-accumulate of ``grad_out * W``), ``grad_W`` per offset
  the channel sum of ``grad_out * shifted x``. Extra memory: one output-sized scratch buffer in backward.
* :func:`laconv_reference` - ``F.unfold``, multiply, sum: obviously right, ``k*k`` times the memory.
  Tests and benchmarks only.

CPU performance notes (``benchmarks/bench_dynamic_conv.py`` measures them):

* All work is NCHW with the channel groups as a view ``(N, g, C/g, H, W)`` so the kernel slice
  ``(N, g, 1, H, W)`` broadcasts. Every view is a single ``as_strided``: the late 13x13 stages run
  ~200 small ops per forward+backward, so Python overhead per op matters.
* Narrow maps (``W < 64``) use *flat* windows: an offset is one contiguous run of ~``h*W`` pixels per
  channel instead of ``h`` rows of ``W - |dx|`` pixels (short rows vectorise badly: ~3x per op at 13x13).
  The pixels of that run that wrap into the neighbouring row are cancelled by multiplying a copy of the
  kernel slice (``1/(C/g)`` of the op's size) with a column mask.
* Channels-last inputs are computed in NCHW (a copy of ``x``; PyTorch's channels-last elementwise loops
  are several times slower here because the broadcast kernel breaks the inner dimension at ``C/g``) and the
  result is returned channels-last, like PyTorch's own convolutions do.
* bfloat16/float16 accumulate in a float32 buffer (``addcmul_`` into float32 promotes per element) and
  round once; the channel sums of ``grad_W`` use PyTorch's reductions, which accumulate in float32.
* Under ``torch.compile`` the kernels are opaque custom ops (``langground::laconv_*``): Dynamo neither
  unrolls the offset loop nor breaks the graph (Inductor fuses this loop worse than eager runs it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["laconv", "laconv_fast", "laconv_reference", "triton_available"]

_REDUCED = (torch.bfloat16, torch.float16)
_FLOATS = (torch.float32, torch.float64, *_REDUCED)
# Below this width a row of W - |dx| pixels is too short to vectorise well; see the module notes.
_FLAT_MAX_WIDTH = 64
_FORCE_PATH: str | None = None  # tests: "band", "flat" or "rows" for every call
# Up to this many channels per group grad_W accumulates channel by channel (no scratch, no sum pass).
_CHANNEL_LOOP_MAX = 4

Window = tuple[int, int, int, int, int, int]  # (offset o, dy, dx, first output pixel, rows, cols)


# --------------------------------------------------------------------------------------------- checks
def _check(x: Tensor, weight: Tensor, kernel_size: int, dilation: int) -> None:
    """One-line ValueErrors naming the argument, its value and what was expected."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"laconv: x must be a 4-D tensor (N, C, H, W), got {got}")
    if not isinstance(weight, Tensor) or weight.dim() != 5:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"laconv: weight must be a 5-D tensor (N, g, k*k, H, W), got {got}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"laconv: kernel_size must be a positive odd int, got {kernel_size!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"laconv: kernel_size must be odd for 'same' padding, got {kernel_size}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"laconv: dilation must be an int >= 1, got {dilation!r}")
    n, c, h, w = x.shape
    wn, g, kk, wh, ww = weight.shape
    if kk != kernel_size * kernel_size:
        raise ValueError(
            f"laconv: weight.shape[2] must be kernel_size**2 = {kernel_size * kernel_size}, got {kk} "
            f"(weight shape {tuple(weight.shape)})"
        )
    if (wn, wh, ww) != (n, h, w):
        raise ValueError(
            f"laconv: weight (N, H, W) = {(wn, wh, ww)} must match x (N, H, W) = {(n, h, w)} "
            f"(x {tuple(x.shape)}, weight {tuple(weight.shape)})"
        )
    if g < 1 or c % g != 0:
        raise ValueError(f"laconv: channels C={c} must be divisible by groups g=weight.shape[1]={g}")
    if x.dtype not in _FLOATS or weight.dtype != x.dtype:
        raise ValueError(
            "laconv: x and weight must share one floating dtype (float32, float64, bfloat16, float16), "
            f"got x {x.dtype} and weight {weight.dtype}"
        )
    if x.device != weight.device:
        raise ValueError(f"laconv: x and weight must be on one device, got {x.device} and {weight.device}")


# ------------------------------------------------------------------------------------------ reference
def laconv_reference(
    x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False
) -> Tensor:
    """Eq. 2 by ``F.unfold``: ``(N, C*k*k, H*W)`` patches times the kernels, summed over the offsets."""
    _check(x, weight, kernel_size, dilation)
    n, c, h, w = x.shape
    g, kk = weight.shape[1], kernel_size * kernel_size
    pad = dilation * (kernel_size - 1) // 2
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=pad).view(n, c, kk, h, w)
    if interleaved:  # channel c = i*g + grp
        out = (cols.view(n, c // g, g, kk, h, w) * weight.unsqueeze(1)).sum(3)
    else:  # channel c = grp*(C/g) + i
        out = (cols.view(n, g, c // g, kk, h, w) * weight.unsqueeze(2)).sum(3)
    return out.reshape(n, c, h, w)


# ----------------------------------------------------------------------------------- window geometry
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


def _steps(t: Tensor, weight: Tensor | None, g: int, k: int, d: int, interleaved: bool) -> tuple[_Step, ...]:
    n, c, h, w = t.shape
    k_strides = weight.stride() if weight is not None else (g * k * k * h * w, k * k * h * w, h * w, w, 1)
    flat = _path(t.shape, k, d) == "flat"
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


def _is_channels_last(t: Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _accumulate(
    maps: Tensor, weight: Tensor, k: int, d: int, interleaved: bool, transpose: bool
) -> Tensor:
    """``out[win] += maps[win + shift] * W_o[win]`` (forward) or, ``transpose``d,
    ``out[win + shift] += maps[win] * W_o[win]`` (grad_x): the offset loop shared by both."""
    fmt = torch.channels_last if _is_channels_last(maps) else torch.contiguous_format
    maps = maps.contiguous()  # channels-last -> NCHW copy (see the module notes)
    if not _flattenable(weight):
        weight = weight.contiguous()
    n, c, h, w = maps.shape
    g = weight.shape[1]
    if _path(maps.shape, k, d) == "band":
        out = _band_apply(maps, weight, k, d, interleaved, transpose)
        return out.contiguous(memory_format=fmt) if fmt is torch.channels_last else out
    acc_dtype = torch.float32 if maps.dtype in _REDUCED else maps.dtype
    out = torch.empty(maps.shape, dtype=acc_dtype, device=maps.device)
    buf = weight.new_empty(n * g * h * w)
    base = maps.storage_offset()
    for idx, s in enumerate(_steps(maps, weight, g, k, d, interleaved)):
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


# ------------------------------------------------------------------------------- band-matrix path
# On small maps (the last stages: 13x13 at 416^2, 7x7 at 224^2) an offset's op moves only a few thousand
# pixels per group, so the offset loop is bound by per-op cost. There Eq. 2 is instead, per sample and
# group, one matrix product ``out_g (C/g x HW) = x_g (C/g x HW) @ M_g (HW x HW)`` with the kernels laid on
# the band ``M_g[p + shift_o, p] = W[g, o, p]``: ~HW/k^2 more multiply-adds, but at GEMM speed, and
# three ops per chunk of groups instead of ~k^2 per pass. Backward: ``grad_x = grad_out @ M^T``,
# ``grad_M = x^T @ grad_out`` read back along the same band. ``M`` has ``m`` margin rows above and below,
# so every tap - including those that read padding - lands in ``M`` with one strided multiply by the
# validity mask: out-of-image rows fall into the margins, and taps that wrap into the neighbouring image
# row write 0 to an entry no valid tap uses (true while W > 2p). Chunks of groups keep ``M`` under
# ``_BAND_BUDGET`` x the output.
_BAND_MAX_PIXELS_PER_TAP = 5  # use the band when H*W <= this * k*k (measured crossover ~6-10)
_BAND_BUDGET = 1.5  # largest band buffer, in units of the output tensor


def _band_margin(k: int, d: int, w: int) -> int:
    p = d * (k - 1) // 2
    return p * w + p


def _path(shape: tuple[int, ...], k: int, d: int) -> str:
    """``"band"`` (small maps), ``"flat"`` (narrow maps) or ``"rows"``: the loop for this geometry."""
    _, c, h, w = shape
    hw = h * w
    band_ok = w > d * (k - 1)  # no wrapped tap can collide with a valid one (see above)
    if _FORCE_PATH is not None:  # tests pin a path; the band path still needs its condition
        return _FORCE_PATH if _FORCE_PATH != "band" or band_ok else "flat"
    rows = hw + 2 * _band_margin(k, d, w)
    if band_ok and hw <= _BAND_MAX_PIXELS_PER_TAP * k * k and rows <= _BAND_BUDGET * c:
        return "band"
    return "flat" if w < _FLAT_MAX_WIDTH and h > 1 else "rows"


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
        self.cg, self.hw, self.m = c // g, h * w, _band_margin(k, d, w)
        self.rows = self.hw + 2 * self.m
        self.chunk = max(1, min(g, int(_BAND_BUDGET * c // self.rows)))
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
            (gc, self.k, self.k, self.h, self.w), (sg, self.k * so, so, sh, sw), t.storage_offset() + n * sn + g0 * sg
        )

    def band(self, gc: int) -> Tensor:
        """Every tap's entry ``M[p + shift + m, p]`` of the buffer as (gc, k, k, H, W)."""
        hw, w, d = self.hw, self.w, self.d
        return self.buf.as_strided(
            (gc, self.k, self.k, self.h, w), (self.rows * hw, d * w * hw, d * hw, w * hw + w, hw + 1), 0
        )

    def matrix(self, gc: int) -> Tensor:
        return self.buf[:gc, self.m : self.m + self.hw]


def _band_apply(maps: Tensor, weight: Tensor, k: int, d: int, interleaved: bool, transpose: bool) -> Tensor:
    """``out = maps @ M`` (forward) or ``maps @ M^T`` (grad_x), chunk by chunk."""
    band = _Band(tuple(maps.shape), weight.shape[1], k, d, interleaved, maps)
    out = torch.empty_like(maps)
    for n, g0, gc in band.chunks():
        torch.mul(band.taps(weight, n, g0, gc), band.mask, out=band.band(gc))
        mat = band.matrix(gc)
        torch.bmm(band.maps(maps, n, g0, gc), mat.transpose(1, 2) if transpose else mat, out=band.maps(out, n, g0, gc))
    return out


def _band_grad_weight(grad_out: Tensor, x: Tensor, weight_shape: list[int], k: int, d: int, interleaved: bool) -> Tensor:
    """``grad_M = x^T @ grad_out`` per chunk, read back along the band (masked: padding taps get 0)."""
    band = _Band(tuple(x.shape), weight_shape[1], k, d, interleaved, x)
    gw = x.new_empty(weight_shape)
    for n, g0, gc in band.chunks():
        torch.bmm(band.maps(x, n, g0, gc).transpose(1, 2), band.maps(grad_out, n, g0, gc), out=band.matrix(gc))
        torch.mul(band.band(gc), band.mask, out=band.taps(gw, n, g0, gc))
    return gw


# -------------------------------------------------------------------------------------- the kernels
def _forward(x: Tensor, weight: Tensor, kernel_size: int, dilation: int, interleaved: bool) -> Tensor:
    """Eq. 2, offset by offset: ``out[win] += x[win + shift] * W_o[win]``."""
    return _accumulate(x, weight, kernel_size, dilation, interleaved, transpose=False)


def _grad_input(grad_out: Tensor, weight: Tensor, kernel_size: int, dilation: int, interleaved: bool) -> Tensor:
    """``grad_x[win + shift] += grad_out[win] * W_o[win]``: the forward loop with the shift reversed."""
    return _accumulate(grad_out, weight, kernel_size, dilation, interleaved, transpose=True)


def _grad_weight(
    grad_out: Tensor, x: Tensor, weight_shape: list[int], kernel_size: int, dilation: int, interleaved: bool
) -> Tensor:
    """``grad_W[:, :, o][win] = sum over the group's channels of grad_out[win] * x[win + shift]``."""
    grad_out, x = grad_out.contiguous(), x.contiguous()
    n, c, h, w = x.shape
    g = weight_shape[1]
    if _path(x.shape, kernel_size, dilation) == "band":
        return _band_grad_weight(grad_out, x, weight_shape, kernel_size, dilation, interleaved)
    gw = x.new_zeros(weight_shape)  # windows skip the padding-only terms: those stay 0
    go_base, x_base = grad_out.storage_offset(), x.storage_offset()
    steps = _steps(x, None, g, kernel_size, dilation, interleaved)
    if c // g <= _CHANNEL_LOOP_MAX and x.dtype not in _REDUCED:
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


# ------------------------------------------------------------- opaque custom ops for torch.compile
def _make_custom_ops() -> tuple[Callable | None, Callable | None, Callable | None]:
    if not hasattr(torch.library, "custom_op"):  # torch < 2.4: Dynamo traces the eager loop instead
        return None, None, None
    try:
        fwd = torch.library.custom_op("langground::laconv_forward", _forward, mutates_args=())
        gin = torch.library.custom_op("langground::laconv_grad_input", _grad_input, mutates_args=())
        gwt = torch.library.custom_op("langground::laconv_grad_weight", _grad_weight, mutates_args=())
    except RuntimeError:  # already registered (module re-imported)
        return None, None, None

    @fwd.register_fake
    def _(x, weight, kernel_size, dilation, interleaved):  # noqa: ANN001, ANN202
        fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)

    @gin.register_fake
    def _(grad_out, weight, kernel_size, dilation, interleaved):  # noqa: ANN001, ANN202
        fmt = torch.channels_last if _is_channels_last(grad_out) else torch.contiguous_format
        return torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=fmt)

    @gwt.register_fake
    def _(grad_out, x, weight_shape, kernel_size, dilation, interleaved):  # noqa: ANN001, ANN202
        return x.new_empty(weight_shape)

    return fwd, gin, gwt


_OPS = _make_custom_ops()


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def _op(index: int, eager: Callable) -> Callable:
    op = _OPS[index]
    return op if op is not None and _compiling() else eager


class _LaConvFunction(torch.autograd.Function):
    """Autograd for the fast path: saves only ``x`` and ``weight``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, kernel_size: int, dilation: int, interleaved: bool) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.conf = (kernel_size, dilation, interleaved)
        return _op(0, _forward)(x, weight, kernel_size, dilation, interleaved)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        k, d, inter = ctx.conf
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = _op(1, _grad_input)(grad_out, weight, k, d, inter)
        if ctx.needs_input_grad[1]:
            gw = _op(2, _grad_weight)(grad_out, x, list(weight.shape), k, d, inter)
        return gx, gw, None, None, None


def laconv_fast(x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False) -> Tensor:
    """Eq. 2 in pure PyTorch without the unfolded tensor (forward and backward); any device."""
    _check(x, weight, kernel_size, dilation)
    return _LaConvFunction.apply(x, weight, kernel_size, dilation, interleaved)


# ---------------------------------------------------------------------------------------- dispatch
@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the optional Triton kernels import (``triton`` installed)."""
    try:
        from langground.ops import _dynamic_conv_triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def laconv(x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False) -> Tensor:
    """LaConv's dynamic depth-wise convolution, Eq. 2.

    Args:
        x: ``(N, C, H, W)`` image features.
        weight: ``(N, g, k*k, H, W)`` per-position kernels (``g`` groups, ``C % g == 0``), offset
            ``a*k + b`` is row ``a``, column ``b`` of the kernel.
        kernel_size: odd ``k``; "same" zero padding ``dilation*(k-1)/2``, stride 1.
        dilation: spacing of the kernel taps.
        interleaved: channel ``c`` uses group ``c % g`` (the authors' CUDA kernel) instead of
            ``c // (C/g)`` (the paper's contiguous split).

    Returns ``(N, C, H, W)`` in ``x``'s dtype (and memory format). CUDA tensors use the Triton kernels
    when ``triton`` imports; everything else the pure PyTorch fast path.
    """
    _check(x, weight, kernel_size, dilation)
    if x.is_cuda and triton_available():
        from langground.ops._dynamic_conv_triton import laconv_triton

        return laconv_triton(x, weight, kernel_size, dilation, interleaved)
    return _LaConvFunction.apply(x, weight, kernel_size, dilation, interleaved)
