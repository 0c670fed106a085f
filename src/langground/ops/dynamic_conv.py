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

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["laconv", "laconv_fast", "laconv_reference", "triton_available"]

_REDUCED = (torch.bfloat16, torch.float16)
_FLOATS = (torch.float32, torch.float64, *_REDUCED)
# Below this width a row of W - |dx| pixels is too short to vectorise well; see the module notes.
_FLAT_MAX_WIDTH = 64

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


@lru_cache(maxsize=64)
def _column_masks(k: int, d: int, w: int, hw: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(k, hw)``: 1 where flat pixel ``q`` shifted by column offset ``b*d - p`` stays inside its row."""
    p = d * (k - 1) // 2
    col = torch.arange(hw, device=device) % w
    src = col.unsqueeze(0) + (torch.arange(k, device=device).unsqueeze(1) * d - p)
    return ((src >= 0) & (src < w)).to(dtype)


class _Plan:
    """Geometry of one call: ``as_strided`` windows of NCHW-contiguous maps and of kernel slices.

    Channel windows are ``(N, g, C/g, rows, cols)`` for contiguous groups and ``(N, C/g, g, rows, cols)``
    for interleaved ones; kernel windows have the same shape with stride 0 over the group's channels.
    Kernel tensors must have "flattenable" pixels (``stride(H) == W * stride(W)``), which contiguous and
    channels-last layouts both have.
    """

    def __init__(self, x: Tensor, g: int, k: int, d: int, interleaved: bool):
        n, c, h, w = x.shape
        self.n, self.c, self.h, self.w, self.g, self.cg, self.k = n, c, h, w, g, c // g, k
        self.flat = w < _FLAT_MAX_WIDTH and h > 1
        self.windows = _windows(k, d, h, w, self.flat)
        self.interleaved = interleaved
        hw = h * w
        if interleaved:  # channel = i*g + grp
            self.sizes = (n, self.cg, g)
            self.chan_strides = (c * hw, g * hw, hw)
            self.sum_dim = 1  # the group's channels, summed for grad_W
        else:  # channel = grp*cg + i
            self.sizes = (n, g, self.cg)
            self.chan_strides = (c * hw, self.cg * hw, hw)
            self.sum_dim = 2
        self.masks = _column_masks(k, d, w, hw, x.dtype, x.device) if self.flat else None

    def maps(self, t: Tensor, start: int, rows: int, cols: int) -> Tensor:
        """Window of a NCHW-contiguous (N, C, H, W) tensor, channels split into groups."""
        return t.as_strided((*self.sizes, rows, cols), (*self.chan_strides, self.w, 1), t.storage_offset() + start)

    def slice4(self, wt: Tensor, o: int, start: int, rows: int, cols: int) -> Tensor:
        """``wt[:, :, o]`` window as (N, g, rows, cols); ``wt`` is (N, g, k*k, H, W) with flat pixels."""
        sn, sg, so, _, sw = wt.stride()
        return wt.as_strided((self.n, self.g, rows, cols), (sn, sg, self.w * sw, sw), wt.storage_offset() + o * so + start * sw)

    def broadcast(self, s: Tensor) -> Tensor:
        """(N, g, rows, cols) -> the channel-window shape, stride 0 over each group's channels."""
        sn, sg, sr, sc = s.stride()
        rows, cols = s.shape[2:]
        if self.interleaved:
            return s.as_strided((*self.sizes, rows, cols), (sn, 0, sg, sr, sc), s.storage_offset())
        return s.as_strided((*self.sizes, rows, cols), (sn, sg, 0, sr, sc), s.storage_offset())

    def kernel(self, wt: Tensor, o: int, dx: int, start: int, rows: int, cols: int, buf: Tensor) -> Tensor:
        """Kernel slice of offset ``o`` broadcast over channels, ready for ``addcmul_``.

        Flat windows with a column shift multiply it by the column mask (into ``buf``) so the pixels that
        wrap into the next row add zero; strided slices (kernels from a channels-last conv) are compacted
        into ``buf`` too, because a strided operand halves the speed of the whole op.
        """
        s = self.slice4(wt, o, start, rows, cols)
        masked = self.flat and dx != 0
        if not masked and s.stride(-1) == 1:
            return self.broadcast(s)
        dst = buf[: s.numel()].view(s.shape)
        if masked:
            b = o % self.k
            torch.mul(s, self.masks[b, start : start + cols], out=dst)
        else:
            dst.copy_(s)
        return self.broadcast(dst)


def _flattenable(t: Tensor) -> bool:
    return t.stride(-2) == t.shape[-1] * t.stride(-1) or t.shape[-2] == 1


def _prepare(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    x = x.contiguous()  # channels-last -> NCHW copy (see module notes)
    if not _flattenable(weight):
        weight = weight.contiguous()
    return x, weight


# -------------------------------------------------------------------------------------- the kernels
def _forward(x: Tensor, weight: Tensor, kernel_size: int, dilation: int, interleaved: bool) -> Tensor:
    """Eq. 2, offset by offset: ``out[win] += x[win + shift] * W[:, :, o][win]`` (window views only)."""
    fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    x, weight = _prepare(x, weight)
    plan = _Plan(x, weight.shape[1], kernel_size, dilation, interleaved)
    acc_dtype = torch.float32 if x.dtype in _REDUCED else x.dtype
    out = torch.empty(x.shape, dtype=acc_dtype, device=x.device)
    kbuf = weight.new_empty(plan.n * plan.g * plan.h * plan.w)
    for idx, (o, dy, dx, start, rows, cols) in enumerate(plan.windows):
        kv = plan.kernel(weight, o, dx, start, rows, cols, kbuf)
        xv = plan.maps(x, start + dy * plan.w + dx, rows, cols)
        ov = plan.maps(out, start, rows, cols)
        if idx == 0 and acc_dtype == x.dtype:
            torch.mul(xv, kv, out=ov)  # the centre window covers every pixel: no zero fill needed
        else:
            if idx == 0:
                out.zero_()  # reduced precision: products are formed in float32 by addcmul_ below
            ov.addcmul_(xv, kv)
    out = out.to(x.dtype)
    return out.contiguous(memory_format=fmt) if fmt is torch.channels_last else out


def _grad_input(grad_out: Tensor, weight: Tensor, kernel_size: int, dilation: int, interleaved: bool) -> Tensor:
    """``grad_x[win + shift] += grad_out[win] * W[:, :, o][win]``: the forward loop, shift reversed."""
    fmt = torch.channels_last if _is_channels_last(grad_out) else torch.contiguous_format
    grad_out, weight = _prepare(grad_out, weight)
    plan = _Plan(grad_out, weight.shape[1], kernel_size, dilation, interleaved)
    acc_dtype = torch.float32 if grad_out.dtype in _REDUCED else grad_out.dtype
    gx = torch.empty(grad_out.shape, dtype=acc_dtype, device=grad_out.device)
    kbuf = weight.new_empty(plan.n * plan.g * plan.h * plan.w)
    for idx, (o, dy, dx, start, rows, cols) in enumerate(plan.windows):
        kv = plan.kernel(weight, o, dx, start, rows, cols, kbuf)
        gv = plan.maps(grad_out, start, rows, cols)
        tv = plan.maps(gx, start + dy * plan.w + dx, rows, cols)
        if idx == 0 and acc_dtype == grad_out.dtype:
            torch.mul(gv, kv, out=tv)
        else:
            if idx == 0:
                gx.zero_()
            tv.addcmul_(gv, kv)
    gx = gx.to(grad_out.dtype)
    return gx.contiguous(memory_format=fmt) if fmt is torch.channels_last else gx


def _grad_weight(
    grad_out: Tensor, x: Tensor, weight_shape: list[int], kernel_size: int, dilation: int, interleaved: bool
) -> Tensor:
    """``grad_W[:, :, o][win] = sum over the group's channels of grad_out[win] * x[win + shift]``."""
    grad_out, x = grad_out.contiguous(), x.contiguous()
    plan = _Plan(x, weight_shape[1], kernel_size, dilation, interleaved)
    gw = x.new_zeros(weight_shape)  # windows never cover padding-only terms: those stay 0
    scratch = torch.empty_like(x).view(-1)  # the one output-sized buffer: products before the sum
    for o, dy, dx, start, rows, cols in plan.windows:
        gv = plan.maps(grad_out, start, rows, cols)
        xv = plan.maps(x, start + dy * plan.w + dx, rows, cols)
        prod = scratch[: gv.numel()].view(gv.shape)
        torch.mul(gv, xv, out=prod)
        gwv = plan.slice4(gw, o, start, rows, cols)
        torch.sum(prod, plan.sum_dim, out=gwv)  # float32 accumulation for reduced dtypes too
        if plan.flat and dx != 0:
            gwv.mul_(plan.masks[o % kernel_size, start : start + cols])
    return gw


def _is_channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


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
