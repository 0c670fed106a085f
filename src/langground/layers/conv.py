"""Conv -> BN -> activation, and folding BN into the preceding conv for inference."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class ConvBNAct(nn.Module):
    """``act(BN(conv(x)))`` with 'same' padding; ``fuse_bn_()`` folds the BN into the conv (inference)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: str = "silu",
        padding: int | None = None,
    ):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, pad, dilation, groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_ch)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse_bn_(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()


def fuse_bn_(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into it (eval only; irreversible).

    Modules opt in by defining ``fuse_bn_()``; the model must be in eval mode (running statistics).
    """
    if model.training:
        raise ValueError("fuse_bn_ needs a model in eval mode (it folds running statistics)")
    for m in list(model.modules()):
        if m is not model and hasattr(m, "fuse_bn_"):
            m.fuse_bn_()
    return model
