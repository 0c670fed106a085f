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
* :func:`~langground.ops.dynamic_conv_export.laconv_export` - what :func:`laconv` runs while
  ``torch.onnx.export`` traces a model: pad + ``k*k`` static slices, standard ONNX ops only.

Files: this module holds the public API, the argument checks, the path choice (:func:`_path`) and the
autograd / ``torch.compile`` plumbing; :mod:`~langground.ops.dynamic_conv_loop` the offset loop (``flat``
and ``rows`` paths), :mod:`~langground.ops.dynamic_conv_band` the band-matrix path for small maps,
:mod:`~langground.ops._dynamic_conv_triton` the CUDA kernels.

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

from langground.ops.dynamic_conv_band import BAND_BUDGET, BAND_MAX_PIXELS_PER_TAP, band_margin
from langground.ops.dynamic_conv_export import exporting, laconv_export
from langground.ops.dynamic_conv_loop import REDUCED, accumulate, grad_weight, is_channels_last

__all__ = ["laconv", "laconv_fast", "laconv_reference", "triton_available"]

_FLOATS = (torch.float32, torch.float64, *REDUCED)
# Below this width a row of W - |dx| pixels is too short to vectorise well; see the module notes.
_FLAT_MAX_WIDTH = 64
_FORCE_PATH: str | None = None  # tests: "band", "flat" or "rows" for every call


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


# ---------------------------------------------------------------------------------------- path choice
def _path(shape: tuple[int, ...], k: int, d: int) -> str:
    """``"band"`` (small maps), ``"flat"`` (narrow maps) or ``"rows"``: the loop for this geometry."""
    _, c, h, w = shape
    hw = h * w
    band_ok = w > d * (k - 1)  # no wrapped tap can collide with a valid one (see above)
    if _FORCE_PATH is not None:  # tests pin a path; the band path still needs its condition
        return _FORCE_PATH if _FORCE_PATH != "band" or band_ok else "flat"
    rows = hw + 2 * band_margin(k, d, w)
    if band_ok and hw <= BAND_MAX_PIXELS_PER_TAP * k * k and rows <= BAND_BUDGET * c:
        return "band"
    return "flat" if w < _FLAT_MAX_WIDTH and h > 1 else "rows"


# -------------------------------------------------------------------------------------- the kernels
def _forward(x: Tensor, weight: Tensor, kernel_size: int, dilation: int, interleaved: bool) -> Tensor:
    """Eq. 2, offset by offset: ``out[win] += x[win + shift] * W_o[win]``."""
    path = _path(x.shape, kernel_size, dilation)
    return accumulate(x, weight, kernel_size, dilation, interleaved, transpose=False, path=path)


def _grad_input(
    grad_out: Tensor, weight: Tensor, kernel_size: int, dilation: int, interleaved: bool
) -> Tensor:
    """``grad_x[win + shift] += grad_out[win] * W_o[win]``: the forward loop with the shift reversed."""
    path = _path(grad_out.shape, kernel_size, dilation)
    return accumulate(grad_out, weight, kernel_size, dilation, interleaved, transpose=True, path=path)


def _grad_weight(
    grad_out: Tensor, x: Tensor, weight_shape: list[int], kernel_size: int, dilation: int, interleaved: bool
) -> Tensor:
    """``grad_W[:, :, o][win] = sum over the group's channels of grad_out[win] * x[win + shift]``."""
    path = _path(x.shape, kernel_size, dilation)
    return grad_weight(grad_out, x, weight_shape, kernel_size, dilation, interleaved, path)


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
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)

    @gin.register_fake
    def _(grad_out, weight, kernel_size, dilation, interleaved):  # noqa: ANN001, ANN202
        fmt = torch.channels_last if is_channels_last(grad_out) else torch.contiguous_format
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


def laconv_fast(
    x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False
) -> Tensor:
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


def laconv(
    x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False
) -> Tensor:
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
    if exporting():  # torch.onnx.export: standard ops only (no custom op needed at run time)
        return laconv_export(x, weight, kernel_size, dilation, interleaved)
    if x.is_cuda and triton_available():
        from langground.ops._dynamic_conv_triton import laconv_triton

        return laconv_triton(x, weight, kernel_size, dilation, interleaved)
    return _LaConvFunction.apply(x, weight, kernel_size, dilation, interleaved)
