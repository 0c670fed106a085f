"""DETR's post-norm Transformer encoder (Carion et al. 2020), as TransVG's two encoders use it.

Positions are added to the queries and keys of every layer, never to the values (DETR's
``with_pos_embed``); LayerNorm follows each residual sum (post-norm) and there is no final norm. The
attention is written out (projections, scaled dot product, softmax) so that its weights are an output:
TransVG's ``--explain`` shows the [REG] token's row, and the graph stays plain for ONNX.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention returning its probabilities ``(N, heads, T, S)`` with the output."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.head_dim).transpose(1, 2)  # (N, heads, T, hd)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``pad`` ``(N, S)`` bool, True at keys to ignore."""
        qh, kh, vh = self._split(self.q(q)), self._split(self.k(k)), self._split(self.v(v))
        logits = qh @ kh.transpose(-1, -2) / math.sqrt(self.head_dim)
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
        probs = logits.softmax(-1)
        out = (self.dropout(probs) @ vh).transpose(1, 2).flatten(2)
        return self.out(out), probs


class PostNormEncoderLayer(nn.Module):
    """``x = LN(x + Attn(x + pos, x + pos, x))``; ``x = LN(x + FFN(x))`` (DETR, ReLU FFN)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.attn = Attention(dim, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop, self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor | None, pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        qk = x if pos is None else x + pos
        a, probs = self.attn(qk, qk, x, pad)
        x = self.norm1(x + self.drop1(a))
        x = self.norm2(x + self.drop2(self.linear2(self.drop(F.relu(self.linear1(x))))))
        return x, probs


class PostNormEncoder(nn.Module):
    """``layers`` :class:`PostNormEncoderLayer`; Xavier-uniform init of every matrix (DETR's
    ``_reset_parameters``). ``forward`` returns the output and each layer's attention probabilities."""

    def __init__(self, dim: int, heads: int, ffn: int, layers: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList([PostNormEncoderLayer(dim, heads, ffn, dropout) for _ in range(layers)])
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, x: Tensor, pos: Tensor | None, pad: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        maps = []
        for layer in self.layers:
            x, probs = layer(x, pos, pad)
            maps.append(probs)
        return x, maps


__all__ = ["Attention", "PostNormEncoder", "PostNormEncoderLayer"]
