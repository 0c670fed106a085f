"""LaConv (Eq. 1-4) and the LaConv block (Eq. 5-6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from langground.layers.conv import make_act
from langground.layers.dynamic import DynamicConv
from langground.layers.generator import LanguageKernelGenerator, ParameterGenerator
from langground.layers.mlp import ConvMLP


class LaConv(nn.Module):
    """``X' = f(X; phi(X, Y))`` (Eq. 1): generated kernels, dropout on the kernels, dynamic conv (Eq. 2).

    Kernel dropout (default 0.1) is the released code's (``layers/laconv.py`` ``LaConv``,
    ``weight_dropout=0.1``); the paper does not mention it. ``interleaved=True`` assigns channel ``c`` to
    kernel group ``c % g`` as the code's SAN ``Aggregation`` kernel does; the default is Eq. 2's split into
    ``g`` consecutive channel groups.

    ``forward(x, text, text_mask) -> (out (B, C, H, W), attention maps (B, L, h', w') or None)``.
    """

    def __init__(
        self,
        dim: int,
        text_dim: int,
        kernel_size: int = 7,
        groups: int = 8,
        packing: int = 1,
        dilation: int = 1,
        kernel_dropout: float = 0.1,
        attn_dim: int | None = None,
        num_heads: int = 8,
        cond_dim: int | None = None,
        language_only: bool = False,
        interleaved: bool = False,
        qk_norm: bool = False,
    ):
        super().__init__()
        if dim % groups:
            raise ValueError(f"LaConv width {dim} is not divisible by {groups} kernel groups")
        self.generator: nn.Module
        if language_only:
            self.generator = LanguageKernelGenerator(text_dim, kernel_size, groups)
        else:
            self.generator = ParameterGenerator(
                dim, text_dim, kernel_size, groups, packing, attn_dim, num_heads, cond_dim, qk_norm
            )
        self.kernel_dropout = kernel_dropout
        self.dynamic = DynamicConv(kernel_size, dilation, interleaved)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        weight, maps = self.generator(x, text, text_mask)
        weight = F.dropout(weight, self.kernel_dropout, self.training)
        return self.dynamic(x, weight.to(x.dtype)), maps


class LaConvBlock(nn.Module):
    """Eq. 5-6: ``X' = act(BN(LaConv(X)) + X)``; ``X_out = MLP(X') + X'`` (1x1 convs, expansion 4).

    As Eq. 5 writes it: no activation after the MLP residual (the released ``LaConvBlock`` adds a SiLU
    there). ``act`` is Eq. 5's unnamed sigma; SiLU, the released code's, by default.
    """

    def __init__(self, dim: int, text_dim: int, act: str = "silu", mlp_ratio: int = 4, **laconv_kwargs):
        super().__init__()
        self.laconv = LaConv(dim, text_dim, **laconv_kwargs)
        self.norm = nn.BatchNorm2d(dim)
        self.act = make_act(act)
        self.mlp = ConvMLP(dim, mlp_ratio, act)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        y, maps = self.laconv(x, text, text_mask)
        x = self.act(self.norm(y) + x)
        return x + self.mlp(x), maps
