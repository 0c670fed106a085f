"""LaConv (Eq. 2) through standard ONNX ops only: pad, k*k static slices, multiply, add.

``torch.onnx.export`` cannot trace the fast path (an autograd ``Function`` with in-place windowed
accumulation) or the Triton kernels; :func:`~langground.ops.dynamic_conv.laconv` switches to this path
while a graph is being exported, so the exported graph runs on any ONNX runtime without a custom op.
The batch may be dynamic (views use -1); the spatial size is that of the traced input.
Numerically it is the reference's sum, offset by offset (float32: ~1e-6 of the fast path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["exporting", "laconv_export"]


def exporting() -> bool:
    """True while ``torch.onnx.export`` (TorchScript or dynamo) or ``torch.export`` traces the model."""
    if torch.onnx.is_in_onnx_export():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def laconv_export(
    x: Tensor, weight: Tensor, kernel_size: int, dilation: int = 1, interleaved: bool = False
) -> Tensor:
    """Eq. 2 as ``sum_o x_pad[window_o] * W[:, :, o]``: ``k*k`` Slice/Mul/Add nodes, no unfolded tensor."""
    _, c, h, w = x.shape
    g, k, d = weight.shape[1], kernel_size, dilation
    pad = d * (k - 1) // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    if interleaved:  # channel c = i*g + grp: kernels broadcast over dim 1
        xp = xp.reshape(-1, c // g, g, hp, wp)
        wt = weight.unsqueeze(1)  # (N, 1, g, k*k, H, W)
    else:  # channel c = grp*(C/g) + i
        xp = xp.reshape(-1, g, c // g, hp, wp)
        wt = weight.unsqueeze(2)  # (N, g, 1, k*k, H, W)
    out = None
    for a in range(k):
        for b in range(k):
            term = xp[..., a * d : a * d + h, b * d : b * d + w] * wt[:, :, :, a * k + b]
            out = term if out is None else out + term
    assert out is not None
    return out.reshape(-1, c, h, w)
