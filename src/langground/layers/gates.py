"""LADS's Gating Network (Su et al., AAAI 2023, Eq. 1-5) and its mutual-information objective (Eq. 8).

The gates of one expression are computed from its linguistic features ALONE, before the image is seen:
that is what lets the model pick a compact subnet per expression and then run only that subnet.

Units: every gated residual layer ``i`` (a stride-1 bottleneck of the visual backbone, or the attention /
FFN sublayer of a fusion layer) has a layer gate; bottlenecks also have one filter gate per conv2 output
channel (``filters[i] > 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langground.ops.distributed import all_reduce_mean


@dataclass
class Gates:
    """Gates of a batch of expressions.

    Attributes:
        layer: ``(B, U)`` one layer gate per unit (hard 0/1 at eval; soft or straight-through in training).
        filter: ``(B, C)`` filter gates of every unit with filters, concatenated in unit order.
        layer_prob / filter_prob: ``p(g = ON | F_l)`` of the same gates (Eq. 8's conditional probability).
    """

    layer: Tensor
    filter: Tensor
    layer_prob: Tensor | None = None
    filter_prob: Tensor | None = None


def logistic_noise(like: Tensor) -> Tensor:
    """``Logistic(0, 1)`` noise (the difference of two i.i.d. Gumbel noises), Eq. 4's epsilon."""
    u = torch.rand_like(like).clamp_(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def binary_gate(logits: Tensor, training: bool, use_soft: bool | None = None) -> tuple[Tensor, Tensor]:
    """Eq. 4-5: ``(gate, soft)``. Training: ``r_hat = r + Logistic`` noise; the soft gate
    ``sigmoid(r_hat)`` or the straight-through hard gate ``1(r_hat >= 0)`` (forward hard, backward the
    soft gate's gradient, Improved Semantic Hashing); ``use_soft`` is Eq. 5's per-batch coin ``n_s >= 0.5``.
    Evaluation: no noise, hard gates only."""
    if not training:
        return (logits >= 0).to(logits.dtype), torch.sigmoid(logits)
    noisy = logits + logistic_noise(logits)
    soft = torch.sigmoid(noisy)
    if use_soft is None:
        use_soft = bool(torch.rand(()) >= 0.5)
    if use_soft:
        return soft, soft
    hard = (noisy >= 0).to(soft.dtype)
    return hard + (soft - soft.detach()), soft  # exactly 0/1 forward (s - s == 0), d soft backward


def _entropy(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def gate_mutual_information(probs: Tensor) -> Tensor:
    """Eq. 8: ``I(G; F_l) = H(G) - H(G | F_l)`` per gate, averaged over gates (``probs``: ``(B, n)`` the
    conditional ``p(g | F_l)`` of each gate). ``p(g)`` is the batch mean of ``p(g | F_l)``; both batch means
    are all-reduced over ranks under DDP, so every rank sees the global batch's statistics."""
    marginal = all_reduce_mean(probs.float().mean(0))  # p(g) ~ 1/B sum_i p(g | F_l^i)
    conditional = all_reduce_mean(_entropy(probs.float()).mean(0))  # H(G | F_l) per gate
    return (_entropy(marginal) - conditional).mean()


class GatingNetwork(nn.Module):
    """Eq. 1-3: per-unit attention pooling over the tokens, a per-unit reduction ``W1^i`` shared by the
    unit's layer head ``W2^i`` and filter head ``W3^i``, GELU between. Head biases start at
    ``init_logit`` (> 0), so every gate starts open; the head weights are Xavier-initialised (the paper's
    init of "the rest"), so the heads of one unit start in different directions (``head_init="small"``:
    N(0, 0.01²), under which they stay parallel and the unit's filters open and close together)."""

    def __init__(
        self,
        dim: int,
        filters: Sequence[int],
        hidden: int = 64,
        init_logit: float = 3.0,
        head_init: str = "xavier",
    ):
        super().__init__()
        n = len(filters)
        self.filters = [int(c) for c in filters]
        self.dim, self.hidden = dim, hidden
        self.embed = nn.Parameter(torch.randn(n, dim) * dim**-0.5)  # e_i of Eq. 1
        self.w1 = nn.Parameter(torch.randn(n, dim, hidden) * dim**-0.5)
        self.b1 = nn.Parameter(torch.zeros(n, hidden))
        total = sum(self.filters)
        self.w2 = nn.Parameter(torch.empty(n, hidden))
        self.b2 = nn.Parameter(torch.full((n,), float(init_logit)))
        self.w3 = nn.Parameter(torch.empty(total, hidden))
        self.b3 = nn.Parameter(torch.full((total,), float(init_logit)))
        owner = [i for i, c in enumerate(self.filters) for _ in range(c)]
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.long), persistent=False)
        with torch.no_grad():
            if head_init == "xavier":  # the paper's "Xavier for the rest": W2^i (1 x d_h), W3^i (c_i x d_h)
                self.w2.uniform_(-1, 1).mul_((6 / (hidden + 1)) ** 0.5)
                bound = torch.tensor([(6 / (self.filters[i] + hidden)) ** 0.5 for i in owner])
                self.w3.uniform_(-1, 1).mul_(bound[:, None])
            elif head_init == "small":  # near-identical heads: they learn in lock-step (docs/lads.md)
                self.w2.normal_(0, 0.01)
                self.w3.normal_(0, 0.01)
            else:
                raise ValueError(f"head_init must be 'xavier' or 'small', got {head_init!r}")

    @property
    def num_units(self) -> int:
        return len(self.filters)

    def pool(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 1-2: ``(h, alpha)``: ``(B, U, D)`` pooled features and ``(B, U, L)`` token weights."""
        scores = torch.einsum("ud,bld->bul", self.embed.to(tokens.dtype), tokens)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        alpha = scores.softmax(-1)
        return torch.einsum("bul,bld->bud", alpha, tokens), alpha

    def relevance(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 3: layer scores ``r_L`` ``(B, U)``, filter scores ``r_C`` ``(B, C)`` and ``alpha``."""
        h, alpha = self.pool(tokens, mask)
        z = F.gelu(torch.einsum("bud,udh->buh", h, self.w1) + self.b1)
        r_layer = (z * self.w2).sum(-1) + self.b2
        r_filter = (z[:, self.owner, :] * self.w3).sum(-1) + self.b3
        return r_layer, r_filter, alpha

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Gates, Tensor]:
        r_layer, r_filter, alpha = self.relevance(tokens.float(), mask)
        use_soft = bool(torch.rand(()) >= 0.5) if self.training else None  # Eq. 5: one coin per batch
        g_layer, p_layer = binary_gate(r_layer, self.training, use_soft)
        g_filter, p_filter = binary_gate(r_filter, self.training, use_soft)
        return Gates(g_layer, g_filter, p_layer, p_filter), alpha


__all__ = ["Gates", "GatingNetwork", "binary_gate", "gate_mutual_information", "logistic_noise"]
