"""The Referring Transformer's query encoder (Li & Sigal 2021; the lecture's "Query Encoder & Decoder"):

    Q̂_p = MLP([f_c(p); f_p]) + E_p,        f_c(p) = Σ f_vl[l_p : r_p] / (r_p - l_p)

- ``f_vl``: the visual-lingual encoder's output at the language positions (``(N, L, d)``: the text
  tokens AFTER fusion with the image, so the context is multi-modal);
- ``[l_p, r_p)``: the phrase's token span, as a boolean ``(N, Q, L)`` membership mask (sub-word tokens of
  the phrase's words; special tokens never belong to a span); ``f_c(p)`` is their mean;
- ``f_p``: the phrase's own encoding ``(N, Q, d)``: the text encoder run on the phrase ALONE, mean-pooled
  over its tokens (the released code uses BERT's pooler output of the phrase; MiniLM's sentence
  embedding is its mean pooling);
- ``MLP``: the released code's ``mlp_mapping``: Linear(2d, d), LN, ReLU, Dropout, Linear(d, d), LN, ReLU;
- ``E_p``: a learnable bias. As in the released code it has 2d entries: the first half is added to give
  the decoder's query content (``tgt`` = Q̂_p), the second half to give its query position embedding
  (``query_pos`` = MLP(...) + E_pos), which DETR's decoder adds to the query at every layer.

``context="attention"`` replaces the span mean by the released code's pooling: a softmax over the span's
tokens scored against the first encoded token, projected and LayerNormed, plus that token (residual).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CONTEXTS = ("mean", "attention")


def span_mean(tokens: Tensor, inside: Tensor) -> Tensor:
    """f_c: mean of ``tokens`` ``(N, L, d)`` over each span ``inside`` ``(N, Q, L)`` -> ``(N, Q, d)``.
    An empty span gives zeros."""
    w = inside.to(tokens.dtype)
    return torch.bmm(w, tokens) / w.sum(-1, keepdim=True).clamp_min(1.0)


class QueryEncoder(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.1, context: str = "mean"):
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"query context={context!r}: expected one of {', '.join(CONTEXTS)}")
        self.dim, self.context = dim, context
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, dim),
            nn.LayerNorm(dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dim, dim),
            nn.LayerNorm(dim),
            nn.ReLU(),
        )
        self.bias = nn.Parameter(torch.empty(2 * dim))  # E_p (content half, position half)
        nn.init.normal_(self.bias)
        if context == "attention":
            self.key, self.score, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.out = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))

    def context_features(self, f_vl: Tensor, inside: Tensor) -> Tensor:
        if self.context == "mean":
            return span_mean(f_vl, inside)  # f_c(p)
        # the released code: attention of the first token over the span, + the first token
        logits = torch.bmm(self.key(f_vl[:, :1]), self.score(f_vl).transpose(1, 2))  # (N, 1, L)
        logits = logits.expand(-1, inside.shape[1], -1).masked_fill(~inside, float("-inf"))
        weights = torch.nan_to_num(logits.softmax(-1))  # an empty span: no weights, not NaN
        return f_vl[:, :1] + self.out(torch.bmm(weights, self.value(f_vl)))

    def forward(self, f_vl: Tensor, inside: Tensor, f_p: Tensor) -> tuple[Tensor, Tensor]:
        """``(tgt, query_pos)``, each ``(N, Q, d)``: ``tgt`` is Q̂_p."""
        fused = self.mlp(torch.cat([self.context_features(f_vl, inside), f_p], dim=-1))
        e_content, e_pos = self.bias[: self.dim], self.bias[self.dim :]
        return fused + e_content, fused + e_pos
