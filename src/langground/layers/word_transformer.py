"""A small BERT-shaped text encoder trained from scratch on the run's own word vocabulary: word embedding
+ learned positions, LayerNorm, then post-norm Transformer layers (RefTR-T's stand-in for BERT offline).

Unlike a recurrent encoder it exports to ONNX with a dynamic text length (an RNN is unrolled over the
exported length).
"""

from __future__ import annotations

import torch
from torch import nn

from langground.layers.detr import DETREncoderLayer
from langground.models.text_encoders import TextFeatures
from langground.types import TextBatch


class WordTransformer(nn.Module):
    def __init__(
        self, vocab_size: int, dim: int, heads: int, ffn: int, layers: int, dropout: float, max_length: int
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(DETREncoderLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.out_dim = dim

    def forward(self, text: TextBatch) -> TextFeatures:
        mask = text.attention_mask.bool()
        x = self.embedding(text.token_ids) + self.position.weight[: text.token_ids.shape[1]]
        x = self.dropout(self.norm(x))
        zero = torch.zeros_like(x)  # positions enter once, at the input (BERT), not per layer
        for layer in self.layers:
            x = layer(x, ~mask, zero)
        return TextFeatures(x, mask)
