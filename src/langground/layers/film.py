"""FiLM block (Perez et al., 2018) as a drop-in replacement for the LaConv block (Tab. 11).

Same skeleton as Eq. 5-6, but the spatial conv is a static depth-wise k x k conv and the language enters
through feature-wise affine modulation of its (non-affine) BN: ``(1 + gamma(y)) * BN(conv(X)) + beta(y)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from langground.layers.conv import make_act
from langground.layers.mlp import ConvMLP
from langground.layers.pooling import masked_mean


class FiLMBlock(nn.Module):
    def __init__(
        self, dim: int, text_dim: int, kernel_size: int = 7, act: str = "silu", mlp_ratio: int = 4, **_
    ):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim, affine=False)
        self.film = nn.Linear(text_dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.act = make_act(act)
        self.mlp = ConvMLP(dim, mlp_ratio, act)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, None]:
        gamma, beta = self.film(masked_mean(text, text_mask)).to(x.dtype)[..., None, None].chunk(2, dim=1)
        y = (1 + gamma) * self.norm(self.conv(x)) + beta
        x = self.act(y + x)
        return x + self.mlp(x), None
