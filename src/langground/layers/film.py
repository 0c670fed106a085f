"""FiLM block (Perez et al., 2018) as a drop-in replacement for the LaConv block (Tab. 11).

FiLM's residual block (its Fig. 3), then the channel MLP of Eq. 6 so the network keeps its skeleton:

    x1 = act(conv1x1(X));  X' = act(FiLM(BN(conv3x3(x1)), y)) + x1;  X_out = MLP(X') + X'

with ``FiLM(h, y) = (1 + gamma(y)) * h + beta(y)`` on a non-affine BN, from the masked mean of the text.
The 3x3 conv is a full (not depth-wise) conv as in FiLM, whatever the stage's LaConv kernel: that is what
makes FiLM the heavier block of Tab. 11 (30.4M / 9.8G vs LaConv's 23.1M / 8.9G for LaConvNet-S).
"""

from __future__ import annotations

from torch import Tensor, nn

from langground.layers.conv import make_act
from langground.layers.mlp import ConvMLP
from langground.layers.pooling import masked_mean


class FiLMBlock(nn.Module):
    """``forward(x, text, text_mask) -> (out (B, C, H, W), None)``; ``kernel_size`` etc. are ignored."""

    def __init__(self, dim: int, text_dim: int, act: str = "silu", mlp_ratio: int = 4, **_):
        super().__init__()
        self.reduce = nn.Conv2d(dim, dim, 1)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(dim, affine=False)
        self.film = nn.Linear(text_dim, 2 * dim)
        # Start as the identity modulation (gamma = 1, beta = 0).
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.act = make_act(act)
        self.mlp = ConvMLP(dim, mlp_ratio, act)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, None]:
        gamma, beta = self.film(masked_mean(text, text_mask)).to(x.dtype)[..., None, None].chunk(2, dim=1)
        x1 = self.act(self.reduce(x))
        x = self.act((1 + gamma) * self.norm(self.conv(x1)) + beta) + x1
        return x + self.mlp(x), None
