"""DETR's post-norm Transformer layers (Carion et al. 2020), as the Referring Transformer uses them: the
position embedding is added to the queries and keys of every attention (never to the values).

- :class:`DETREncoderLayer`: self-attention + FFN over a token sequence (``pos`` per token);
- :class:`DETRDecoderLayer`: query self-attention, cross-attention to a memory, FFN; it also returns the
  cross-attention weights per head ``(N, heads, Q, S)`` (explanations, RES heads).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class _FFN(nn.Module):
    def __init__(self, dim: int, ffn: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.dropout, self.dropout_out = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout_out(self.linear2(self.dropout(F.relu(self.linear1(x)))))


class DETREncoderLayer(nn.Module):
    """``x = LN(x + MHA(x + pos, x + pos, x))``, ``x = LN(x + FFN(x))`` (batch first)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _FFN(dim, ffn, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor, pos: Tensor) -> Tensor:
        q = x + pos
        a = self.self_attn(q, q, x, key_padding_mask=pad, need_weights=False)[0]
        x = self.norm1(x + self.dropout(a))
        return self.norm2(x + self.ffn(x))


class DETRDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to ``memory``, FFN; post-norm. Returns the new queries and
    the cross-attention weights ``(N, heads, Q, S)``."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _FFN(dim, ffn, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_pad: Tensor,
        memory_pad: Tensor,
        pos: Tensor,
        query_pos: Tensor,
    ) -> tuple[Tensor, Tensor]:
        q = tgt + query_pos
        a = self.self_attn(q, q, tgt, key_padding_mask=tgt_pad, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(a))
        a, weights = self.cross_attn(
            tgt + query_pos,
            memory + pos,
            memory,
            key_padding_mask=memory_pad,
            need_weights=True,
            average_attn_weights=False,
        )
        tgt = self.norm2(tgt + self.dropout2(a))
        return self.norm3(tgt + self.ffn(tgt)), weights
