"""QGHC block (Gao et al., 2018: question-guided hybrid convolution), drop-in for the LaConv block (Tab. 11).

Hybrid kernels: a static depth-wise k x k kernel per channel plus question-dependent group kernels
predicted from the sentence and shared over all positions (unlike LaConv's per-position kernels).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from langground.layers.conv import make_act
from langground.layers.dynamic import DynamicConv
from langground.layers.mlp import ConvMLP
from langground.layers.pooling import masked_mean


class QGHCBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        text_dim: int,
        kernel_size: int = 7,
        groups: int = 8,
        act: str = "silu",
        mlp_ratio: int = 4,
        interleaved: bool = False,
        **_,
    ):
        super().__init__()
        self.kernel_size, self.groups = kernel_size, groups
        self.static = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.question = nn.Linear(text_dim, groups * kernel_size * kernel_size)
        nn.init.normal_(self.question.weight, std=1.0 / (kernel_size * math.sqrt(text_dim)))
        nn.init.zeros_(self.question.bias)
        self.dynamic = DynamicConv(kernel_size, interleaved=interleaved)
        self.norm = nn.BatchNorm2d(dim)
        self.act = make_act(act)
        self.mlp = ConvMLP(dim, mlp_ratio, act)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, None]:
        kernels = self.question(masked_mean(text, text_mask)).unflatten(1, (self.groups, -1))  # (B, g, k*k)
        y = self.static(x) + self.dynamic(x, kernels.to(x.dtype))
        x = self.act(self.norm(y) + x)
        return x + self.mlp(x), None
