"""Triton kernels for LaConv's dynamic depth-wise convolution (Eq. 2); used by ``laconv`` on CUDA.

Importing this module fails without ``triton``; :func:`langground.ops.dynamic_conv.triton_available`
turns that into "use the PyTorch fast path". The kernels are direct transcriptions of the definition,
one program per (sample, channel or group) and block of pixels, accumulating in float32 (float64
for float64 inputs):

* forward: ``out[c, q] = sum_o x[c, q + s_o] * W[grp(c), o, q]`` (taps reading padding masked off);
* grad_x, as a gather (no atomics): ``gx[c, q] = sum_o go[c, q - s_o] * W[grp(c), o, q - s_o]``;
* grad_W: ``gw[grp, o, q] = sum_{c in grp} go[c, q] * x[c, q + s_o]``.

Every tensor is addressed through its own strides, so channels-last inputs need no copy. The tests run
these kernels on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 128


@triton.jit
def _laconv_fwd_kernel(
    x_ptr, w_ptr, out_ptr,
    C, H, W, G, CG,
    sxn, sxc, sxh, sxw,
    swn, swg, swo, swh, sww,
    son, soc, soh, sow,
    K: tl.constexpr, DIL: tl.constexpr, INTERLEAVED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    c = nc % C
    if INTERLEAVED:  # channel = i*G + grp
        grp = c % G
    else:  # channel = grp*CG + i
        grp = c // CG
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = q < H * W
    i = q // W
    j = q % W
    x_base = x_ptr + n * sxn + c * sxc
    w_base = w_ptr + n * swn + grp * swg
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for a in tl.static_range(K):
        for b in tl.static_range(K):
            si = i + (a * DIL - DIL * (K - 1) // 2)
            sj = j + (b * DIL - DIL * (K - 1) // 2)
            ok = inside & (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
            xv = tl.load(x_base + si * sxh + sj * sxw, mask=ok, other=0.0).to(ACC)
            wv = tl.load(w_base + (a * K + b) * swo + i * swh + j * sww, mask=inside, other=0.0).to(ACC)
            acc += xv * wv
    tl.store(out_ptr + n * son + c * soc + i * soh + j * sow, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _laconv_grad_x_kernel(
    go_ptr, w_ptr, gx_ptr,
    C, H, W, G, CG,
    sgn, sgc, sgh, sgw,
    swn, swg, swo, swh, sww,
    sxn, sxc, sxh, sxw,
    K: tl.constexpr, DIL: tl.constexpr, INTERLEAVED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    c = nc % C
    if INTERLEAVED:  # channel = i*G + grp
        grp = c % G
    else:  # channel = grp*CG + i
        grp = c // CG
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = q < H * W
    i = q // W
    j = q % W
    go_base = go_ptr + n * sgn + c * sgc
    w_base = w_ptr + n * swn + grp * swg
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for a in tl.static_range(K):
        for b in tl.static_range(K):
            # output pixel (oi, oj) read this input pixel through tap (a, b)
            oi = i - (a * DIL - DIL * (K - 1) // 2)
            oj = j - (b * DIL - DIL * (K - 1) // 2)
            ok = inside & (oi >= 0) & (oi < H) & (oj >= 0) & (oj < W)
            gv = tl.load(go_base + oi * sgh + oj * sgw, mask=ok, other=0.0).to(ACC)
            wv = tl.load(w_base + (a * K + b) * swo + oi * swh + oj * sww, mask=ok, other=0.0).to(ACC)
            acc += gv * wv
    tl.store(gx_ptr + n * sxn + c * sxc + i * sxh + j * sxw, acc.to(gx_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _laconv_grad_w_kernel(
    go_ptr, x_ptr, gw_ptr,
    H, W, G, CG,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    swn, swg, swo, swh, sww,
    K: tl.constexpr, DIL: tl.constexpr, INTERLEAVED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    ng = tl.program_id(0).to(tl.int64)
    n = ng // G
    grp = ng % G
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = q < H * W
    i = q // W
    j = q % W
    for a in tl.static_range(K):
        for b in tl.static_range(K):
            si = i + (a * DIL - DIL * (K - 1) // 2)
            sj = j + (b * DIL - DIL * (K - 1) // 2)
            ok = inside & (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
            acc = tl.zeros((BLOCK,), dtype=ACC)
            for t in range(CG):
                if INTERLEAVED:
                    c = t * G + grp
                else:
                    c = grp * CG + t
                gv = tl.load(go_ptr + n * sgn + c * sgc + i * sgh + j * sgw, mask=ok, other=0.0).to(ACC)
                xv = tl.load(x_ptr + n * sxn + c * sxc + si * sxh + sj * sxw, mask=ok, other=0.0).to(ACC)
                acc += gv * xv
            dst = gw_ptr + n * swn + grp * swg + (a * K + b) * swo + i * swh + j * sww
            tl.store(dst, acc.to(gw_ptr.dtype.element_ty), mask=inside)


def _acc(t: Tensor) -> tl.dtype:
    """Accumulator type: float64 for float64 inputs, float32 for everything else."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _grid(rows: int, h: int, w: int) -> tuple[int, int]:
    return (rows, triton.cdiv(h * w, _BLOCK))


def _forward(x: Tensor, weight: Tensor, k: int, d: int, interleaved: bool) -> Tensor:
    n, c, h, w = x.shape
    g = weight.shape[1]
    out = torch.empty_like(x)
    _laconv_fwd_kernel[_grid(n * c, h, w)](
        x, weight, out, c, h, w, g, c // g, *x.stride(), *weight.stride(), *out.stride(),
        K=k, DIL=d, INTERLEAVED=interleaved, ACC=_acc(x), BLOCK=_BLOCK,
    )  # fmt: skip
    return out


def _grad_input(grad_out: Tensor, x: Tensor, weight: Tensor, k: int, d: int, interleaved: bool) -> Tensor:
    n, c, h, w = x.shape
    g = weight.shape[1]
    gx = torch.empty_like(x)
    _laconv_grad_x_kernel[_grid(n * c, h, w)](
        grad_out, weight, gx, c, h, w, g, c // g, *grad_out.stride(), *weight.stride(), *gx.stride(),
        K=k, DIL=d, INTERLEAVED=interleaved, ACC=_acc(x), BLOCK=_BLOCK,
    )  # fmt: skip
    return gx


def _grad_weight(grad_out: Tensor, x: Tensor, weight: Tensor, k: int, d: int, interleaved: bool) -> Tensor:
    n, c, h, w = x.shape
    g = weight.shape[1]
    gw = torch.empty_like(weight)
    _laconv_grad_w_kernel[_grid(n * g, h, w)](
        grad_out, x, gw, h, w, g, c // g, *grad_out.stride(), *x.stride(), *gw.stride(),
        K=k, DIL=d, INTERLEAVED=interleaved, ACC=_acc(x), BLOCK=_BLOCK,
    )  # fmt: skip
    return gw


class _LaConvTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, k: int, d: int, interleaved: bool) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.conf = (k, d, interleaved)
        return _forward(x, weight, k, d, interleaved)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        k, d, interleaved = ctx.conf
        gx = _grad_input(grad_out, x, weight, k, d, interleaved) if ctx.needs_input_grad[0] else None
        gw = _grad_weight(grad_out, x, weight, k, d, interleaved) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None, None


def laconv_triton(
    x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False
) -> Tensor:
    """Eq. 2 with Triton kernels (inputs already validated by :func:`~langground.ops.dynamic_conv.laconv`)."""
    return _LaConvTriton.apply(x, weight, kernel_size, dilation, interleaved)
