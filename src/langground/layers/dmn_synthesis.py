"""DMN's Language Module (Sec. 3.3, Eq. 2-8) and Synthesis Module (Sec. 3.4, Eq. 9-10).

Shapes: ``N`` expressions, ``T`` words, visual map ``[I_N, LOC]`` of ``C_v`` channels at ``h x w``.

- :class:`LanguageModule`: ``e_t = WE(w_t)``, ``h_t = SRU(e_1..e_t)``, ``r_t = [e_t, h_t]`` (or ``h_t``
  alone: Table 1 row 2) and the K dynamic filters ``f_{k,t} = sigmoid(W_{f_k} r_t + b_{f_k})`` (Eq. 7),
  each a 1x1 filter over the ``C_v`` channels of ``[I_N, LOC]`` (one Linear ``D_r -> K * C_v``, as the
  release's ``adaptative_filter``).
- :class:`SynthesisModule`: ``F_t = {f_{k,t} * [I_N, LOC]}_k`` (K response maps), ``M_t = Conv1x1([I_N,
  LOC, r_t, F_t])`` (Eq. 9, the release's channel order; the paper writes ``[I_N, F_t, LOC, r_t]``, the
  same function up to a permutation of the conv's input columns) and the multimodal SRU over the words at
  every pixel (Eq. 10) -> ``R_N`` ``(N, hidden, h, w)``.

The 1x1 conv of Eq. 9 is evaluated by parts: its ``[I_N, LOC]`` columns once per image (they do not
depend on t), its ``r_t`` columns once per word (they do not depend on the pixel) and its ``F_t`` columns
per word and pixel. The sum equals the conv of the concatenation; the weight is one ``comb_conv`` as in
the release, so its state dict keeps one shape.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.layers.sru import SRU, Activation, last_valid

__all__ = ["MSRU_LAYOUTS", "LanguageModule", "SynthesisModule", "filter_responses", "official_order"]

MSRU_LAYOUTS = ("paper", "official")


class LanguageModule(nn.Module):
    """Words -> ``r`` ``(N, T, D_r)`` and the dynamic filters ``(N, T, K, C_v)`` (None when K = 0)."""

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        hidden_dim: int,
        num_layers: int,
        num_filters: int,
        filter_channels: int,
        with_embedding: bool = True,
        activation: Activation = "tanh",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.sru = SRU(emb_dim, hidden_dim, num_layers, activation, dropout)
        self.with_embedding = with_embedding
        self.out_dim = hidden_dim + (emb_dim if with_embedding else 0)
        self.num_filters, self.filter_channels = int(num_filters), int(filter_channels)
        self.filters = nn.Linear(self.out_dim, num_filters * filter_channels) if num_filters > 0 else None

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        e = self.emb(ids)  # (N, T, E)
        h, _ = self.sru(e.transpose(0, 1), mask.t())  # Eq. 2-6 over (T, N, E)
        h = h.transpose(0, 1)
        r = torch.cat((e, h), dim=-1) if self.with_embedding else h  # r_t = [e_t, h_t]
        if self.filters is None:
            return r, None
        n, t, _ = r.shape
        f = torch.sigmoid(self.filters(r))  # Eq. 7
        return r, f.view(n, t, self.num_filters, self.filter_channels)


def filter_responses(vis: Tensor, filters: Tensor) -> Tensor:
    """``F_t``: ``vis`` ``(N, C_v, h, w)`` convolved with each word's K 1x1 filters ``(N, T, K, C_v)``
    -> ``(N, T, K, h, w)``."""
    return torch.einsum("nchw,ntkc->ntkhw", vis, filters)


def official_order(lengths: Tensor, pixels: int, steps: int) -> Tensor:
    """Where the release's mSRU outputs come from, as indices into our ``(pixels * steps)`` sequence.

    The release (batch 1, no padding) reshapes ``M`` ``(L, 1, C, h, w)`` to one sequence of ``h*w*L``
    steps in pixel-major order (step ``p * L + t`` is word t at pixel p, pixels in raster order), runs
    the mSRU over it and keeps its LAST ``h*w`` outputs as the ``h x w`` map (output ``q`` -> pixel q).
    Our sequence per expression is laid out ``p * steps + t`` with the padded words skipped by the mask,
    so the release's step ``j`` (over the ``L_n`` real words) is our ``(j // L_n) * steps + j % L_n``.
    Returns ``(N, pixels)`` int64.
    """
    q = torch.arange(pixels, device=lengths.device).unsqueeze(0)  # (1, P)
    length = lengths.unsqueeze(1).to(torch.int64)  # (N, 1)
    j = (length - 1) * pixels + q  # the last P of L_n * P steps
    return torch.div(j, length, rounding_mode="floor") * steps + j % length


class SynthesisModule(nn.Module):
    """``[I_N, LOC]``, ``r`` and the filters -> ``R_N`` ``(N, hidden, h, w)`` (Eq. 9-10)."""

    def __init__(
        self,
        vis_channels: int,
        r_dim: int,
        num_filters: int,
        mixed_dim: int,
        hidden_dim: int,
        num_layers: int = 3,
        concat_r: bool = True,
        layout: Literal["paper", "official"] = "paper",
        activation: Activation = "tanh",
        dropout: float = 0.0,
    ):
        super().__init__()
        if layout not in MSRU_LAYOUTS:
            raise LanggroundError(f"msru_layout {layout!r}: expected one of {', '.join(MSRU_LAYOUTS)}")
        self.vis_channels, self.num_filters = int(vis_channels), int(num_filters)
        self.r_dim = int(r_dim) if concat_r else 0
        self.layout = layout
        self.comb_conv = nn.Conv2d(self.vis_channels + self.r_dim + self.num_filters, mixed_dim, 1)
        self.msru = SRU(mixed_dim, hidden_dim, num_layers, activation, dropout)
        self.out_dim = int(hidden_dim)

    def multimodal(self, vis: Tensor, r: Tensor, responses: Tensor | None) -> Tensor:
        """``M`` ``(N, T, mixed, h, w)`` (Eq. 9), the 1x1 conv evaluated by parts (module docstring)."""
        w = self.comb_conv.weight.flatten(1)  # (mixed, C_v + D_r + K)
        cv, dr = self.vis_channels, self.r_dim
        m = torch.einsum("oc,nchw->nohw", w[:, :cv], vis).unsqueeze(1)  # (N, 1, mixed, h, w)
        m = m + self.comb_conv.bias.view(1, 1, -1, 1, 1)
        if dr:
            m = m + (r @ w[:, cv : cv + dr].t())[..., None, None]  # (N, T, mixed, 1, 1)
        if responses is not None:
            m = m + torch.einsum("ok,ntkhw->ntohw", w[:, cv + dr :], responses)
        if m.shape[1] != r.shape[1]:  # no word-dependent part (not reachable from DMN's switches)
            m = m.expand(-1, r.shape[1], -1, -1, -1)
        return m

    def forward(self, vis: Tensor, r: Tensor, mask: Tensor, responses: Tensor | None) -> Tensor:
        m = self.multimodal(vis, r, responses)
        n, steps, c, h, w = m.shape
        if self.layout == "paper":  # Eq. 10: sequence = words, batch = the N*h*w pixels
            seq = m.permute(1, 0, 3, 4, 2).reshape(steps, n * h * w, c)
            pix_mask = mask.t().unsqueeze(-1).expand(steps, n, h * w).reshape(steps, n * h * w)
            out, _ = self.msru(seq, pix_mask)
            final = last_valid(out, pix_mask)  # (N*h*w, hidden)
            return final.view(n, h, w, -1).permute(0, 3, 1, 2)
        # "official": one pixel-major sequence per expression (the release's batch-1 layout)
        seq = m.permute(0, 3, 4, 1, 2).reshape(n, h * w * steps, c).transpose(0, 1)
        seq_mask = mask.unsqueeze(1).expand(n, h * w, steps).reshape(n, h * w * steps).t()
        out, _ = self.msru(seq, seq_mask)  # (h*w*T, N, hidden)
        idx = official_order(mask.sum(dim=1), h * w, steps)  # (N, h*w)
        kept = out.transpose(0, 1).gather(1, idx.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        return kept.transpose(1, 2).reshape(n, -1, h, w)
