"""The channel MLP of the LaConv block (Eq. 6): ``BN(act(BN(X W_a)) W_b)`` with 1x1 convs."""

from __future__ import annotations

from torch import Tensor, nn

from langground.layers.conv import ConvBNAct


class ConvMLP(nn.Module):
    def __init__(self, dim: int, expansion: int = 4, act: str = "silu"):
        super().__init__()
        self.fc1 = ConvBNAct(dim, dim * expansion, 1, act=act)
        self.fc2 = ConvBNAct(dim * expansion, dim, 1, act="identity")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x))
