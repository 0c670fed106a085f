"""DMN's Upsampling Module (Sec. 3.5, Fig. 6): ``R_N`` back to the input's resolution with skips.

At each stage (deepest first) ``R_n`` is concatenated with ``I_n`` (when ``skips``), a 3x3 conv maps it
to the stage's width and a bilinear x2 gives ``R_{n-1}``; a 1x1 conv on ``R_1`` gives one logit map.
Widths 512, 256, 128, 64, 32 are the release's (``np.logspace(9, 5, 5, base=2)``; the paper gives none).

``order="conv_up"`` is the paper's text (conv, then x2); ``"up_conv"`` is the release's
(``nn.Sequential(upsample, conv)``: x2, then the conv at the finer stride). ``act`` between stages:
``none`` (the release's default ``non_linearity=False``; the paper: not stated), ``relu`` or ``prelu``
(the release's option).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.errors import LanggroundError

__all__ = ["UM_ACTS", "UM_ORDERS", "UpsamplingModule"]

UM_ORDERS = ("conv_up", "up_conv")
UM_ACTS = ("none", "relu", "prelu")


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class UpsamplingModule(nn.Module):
    """``forward(R_N, feats [I_1 .. I_N] (finest first), out_size) -> (N, 1, H, W)`` logits."""

    def __init__(
        self,
        in_dim: int,
        skip_dims: Sequence[int],
        channels: Sequence[int] = (512, 256, 128, 64, 32),
        skips: bool = True,
        order: str = "conv_up",
        act: str = "none",
    ):
        super().__init__()
        if order not in UM_ORDERS:
            raise LanggroundError(f"um_order {order!r}: expected one of {', '.join(UM_ORDERS)}")
        if act not in UM_ACTS:
            raise LanggroundError(f"um_act {act!r}: expected one of {', '.join(UM_ACTS)}")
        if len(channels) != len(skip_dims):
            raise LanggroundError(
                f"um_channels {list(channels)}: expected one width per backbone level ({len(skip_dims)})"
            )
        self.skips, self.order = skips, order
        deepest_first = list(skip_dims)[::-1]
        self.convs = nn.ModuleList()
        self.acts = nn.ModuleList()
        dim = in_dim
        for skip, width in zip(deepest_first, channels, strict=True):
            self.convs.append(nn.Conv2d(dim + (skip if skips else 0), width, 3, padding=1))
            self.acts.append(
                nn.Identity() if act == "none" else nn.ReLU(inplace=True) if act == "relu" else nn.PReLU()
            )
            dim = width
        self.out_layer = nn.Conv2d(dim, 1, 1)

    def forward(self, x: Tensor, feats: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        for conv, act, feat in zip(self.convs, self.acts, list(feats)[::-1], strict=True):
            if x.shape[-2:] != feat.shape[-2:]:  # a backbone whose levels are not exactly x2 apart
                x = F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            if self.skips:
                x = torch.cat((x, feat.to(x.dtype)), dim=1)  # [R_n, I_n]
            x = act(_up2(conv(x)) if self.order == "conv_up" else conv(_up2(x)))
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return self.out_layer(x)
