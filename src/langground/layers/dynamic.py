"""Thin module around the LaConv operator (Eq. 2), plus position-shared dynamic depth-wise conv.

:class:`DynamicConv` exists as its own module so the bench can attribute the operator's MACs
(``N*C*H*W*k*k``) to it exactly: FLOP counters only see matmul/conv ops, not its element-wise work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.ops.dynamic_conv import laconv


def _channels_last(t: Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def channel_groups(
    channels: int, groups: int, interleaved: bool, device: torch.device | None = None
) -> Tensor:
    """Index of the kernel group used by each channel: ``c // (C/g)`` (contiguous: Eq. 2's split into
    consecutive groups) or ``c % g`` (interleaved: the released code's SAN ``Aggregation`` kernel)."""
    c = torch.arange(channels, device=device)
    return c % groups if interleaved else c // (channels // groups)


def shared_dynamic_dwconv(
    x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False
) -> Tensor:
    """Depth-wise conv with per-sample, per-group kernels shared over positions.

    ``x: (B, C, H, W)``, ``weight: (B, g, k*k)``. The batch is folded into the channel groups so one
    grouped ``conv2d`` does the work (the "language only" ablation of Tab. 10, and QGHC's kernels).
    """
    b, c, h, w = x.shape
    g = weight.shape[1]
    per_channel = weight[:, channel_groups(c, g, interleaved, x.device)]  # (B, C, k*k)
    per_channel = per_channel.reshape(b * c, 1, kernel_size, kernel_size).to(x.dtype)
    pad = dilation * (kernel_size - 1) // 2
    out = F.conv2d(x.reshape(1, b * c, h, w), per_channel, padding=pad, dilation=dilation, groups=b * c)
    return out.view(b, c, h, w)


class DynamicConv(nn.Module):
    """``f(X; W)`` of Eq. 2: per-position (``W: (B, g, k*k, H, W)``) or shared (``(B, g, k*k)``) kernels."""

    def __init__(self, kernel_size: int, dilation: int = 1, interleaved: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.interleaved = interleaved

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        if weight.dim() == 3:
            return shared_dynamic_dwconv(x, weight, self.kernel_size, self.dilation, self.interleaved)
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
            # On CPU the operator's reduced-precision path converts to float32 once per kernel offset;
            # one conversion of x and W to contiguous float32 up front is ~2x faster (and exact in fp32).
            fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
            out = laconv(
                x.float().contiguous(),
                weight.float().contiguous(),
                self.kernel_size,
                self.dilation,
                self.interleaved,
            )
            return out.to(x.dtype, memory_format=fmt)
        return laconv(x, weight, self.kernel_size, dilation=self.dilation, interleaved=self.interleaved)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}, interleaved={self.interleaved}"
