"""Simple Recurrent Unit (Lei et al. 2017, "Training RNNs as fast as CNNs"), in pure PyTorch, batched
with padding masks; the cell DMN (Margffoy-Tuay et al. 2018, Eq. 2-6) uses as its language and multimodal
recurrence.

Per layer, with ``x_t`` the layer's input::

    x~_t = W x_t                                  # Eq. 2 (no bias)
    f_t  = sigmoid(W_f x_t + b_f)                 # Eq. 3
    r_t  = sigmoid(W_r x_t + b_r)                 # Eq. 4
    c_t  = f_t * c_{t-1} + (1 - f_t) * x~_t       # Eq. 5
    h_t  = r_t * g(c_t) + (1 - r_t) * x'_t        # Eq. 6; x'_t = x_t, or W_h x_t when widths differ

``g`` is ``tanh`` (``activation="tanh"``: SRU v1's default ``use_tanh=1``, which the DMN release ran) or
``sigmoid`` (what DMN's Eq. 6 text says), or ``identity``. Only Eq. 5 is sequential: the projections are
one matmul over all steps and Eq. 6 is evaluated for all steps after the scan.

Parameter layout = SRU v1 (``taolei87/sru`` at 43c85ed, the commit the DMN README pins): per layer
``rnn_lst.<i>.weight`` ``(n_in, k * n_out)`` with the ``k`` projections of unit ``j`` in columns
``j * k + (0: x~, 1: f, 2: r, 3: x')``, ``k = 3`` when ``n_in == n_out`` (the highway is the input
itself) else 4, and ``rnn_lst.<i>.bias`` ``(2 * n_out)`` = ``[b_f; b_r]``; init uniform in
``±sqrt(3 / n_in)``, biases 0. So v1 state dicts load as they are (unidirectional).

Padding: where ``mask`` is False the step is skipped: ``c`` (and the final state) carry over unchanged
and ``h`` is 0, so a padded batch gives, at its real steps, exactly what each sequence gives alone.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError

__all__ = ["ACTIVATIONS", "SRU", "SRUCell", "last_valid", "masked_scan"]

Activation = Literal["tanh", "sigmoid", "identity"]
ACTIVATIONS: tuple[str, ...] = ("tanh", "sigmoid", "identity")


def masked_scan(a: Tensor, b: Tensor, c0: Tensor) -> Tensor:
    """``c_t = a_t * c_{t-1} + b_t`` for ``t = 0..T-1`` over ``(T, ...)`` tensors; returns every ``c_t``.

    A Python loop of one fused multiply-add per step: unrolled (static T) by ONNX / torch.export, and
    as fast as the TorchScript'd loop on CPU for word-length sequences (benchmarks/bench_sru.py).
    """
    out = []
    c = c0
    for t in range(a.shape[0]):
        c = torch.addcmul(b[t], a[t], c)
        out.append(c)
    return torch.stack(out)


def last_valid(h: Tensor, mask: Tensor | None) -> Tensor:
    """``(T, B, D)`` -> ``(B, D)``: each column's state at its last real step (``mask`` ``(T, B)``)."""
    if mask is None:
        return h[-1]
    steps = torch.arange(h.shape[0], device=h.device).unsqueeze(1)
    last = torch.where(mask, steps, torch.zeros_like(steps)).amax(dim=0)  # (B,)
    return h.gather(0, last.view(1, -1, 1).expand(1, -1, h.shape[-1])).squeeze(0)


class SRUCell(nn.Module):
    """One SRU layer (SRU v1's ``SRUCell``, unidirectional), ``(T, B, n_in) -> (T, B, n_out)``."""

    def __init__(self, n_in: int, n_out: int, activation: Activation = "tanh", dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise LanggroundError(f"sru activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise LanggroundError(f"sru dropout {dropout}: expected a probability in [0, 1)")
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.k = 3 if self.n_in == self.n_out else 4
        self.activation = activation
        self.dropout = float(dropout)
        self.weight = nn.Parameter(torch.empty(self.n_in, self.n_out * self.k))
        self.bias = nn.Parameter(torch.empty(2 * self.n_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(3.0 / self.n_in)  # SRU v1's init_weight
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def _g(self, c: Tensor) -> Tensor:
        if self.activation == "tanh":
            return torch.tanh(c)
        if self.activation == "sigmoid":
            return torch.sigmoid(c)
        return c

    def forward(
        self, x: Tensor, mask: Tensor | None = None, c0: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``x`` ``(T, B, n_in)``, ``mask`` ``(T, B)`` bool (True: a real step), ``c0`` ``(B, n_out)``.

        Returns ``h`` ``(T, B, n_out)`` (0 at padded steps) and the final ``c`` ``(B, n_out)``.
        """
        steps, batch, _ = x.shape
        d, k = self.n_out, self.k
        u = (x.reshape(steps * batch, self.n_in) @ self.weight).view(steps, batch, d, k)
        x_tilde = u[..., 0]  # Eq. 2
        b_f, b_r = self.bias.view(2, d)
        forget = torch.sigmoid(u[..., 1] + b_f)  # Eq. 3
        reset = torch.sigmoid(u[..., 2] + b_r)  # Eq. 4
        highway = x if k == 3 else u[..., 3]
        a, b = forget, (1 - forget) * x_tilde
        if mask is not None:  # a padded step keeps c: a = 1, b = 0
            m = mask.unsqueeze(-1).to(x.dtype)
            a, b = a * m + (1 - m), b * m
        if c0 is None:
            c0 = x.new_zeros(batch, d)
        c = masked_scan(a, b, c0)  # Eq. 5
        g = self._g(c)
        if self.training and self.dropout > 0:  # SRU v1's mask_h: one mask per sequence, on g(c)
            keep = torch.empty(batch, d, device=x.device, dtype=x.dtype).bernoulli_(1 - self.dropout)
            g = g * (keep / (1 - self.dropout))
        h = reset * g + (1 - reset) * highway  # Eq. 6
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        return h, c[-1]

    def extra_repr(self) -> str:
        return f"{self.n_in}, {self.n_out}, k={self.k}, activation={self.activation!r}"


class SRU(nn.Module):
    """Stacked SRU layers (SRU v1's ``SRU``): ``(T, B, input_size) -> (T, B, hidden_size)``.

    ``dropout`` applies to every layer but the last, as in v1. ``forward`` returns the last layer's
    ``h`` for every step and the final ``c`` of each layer ``(num_layers, B, hidden_size)``;
    :meth:`final_hidden` gives each sequence's last real ``h``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 2,
        activation: Activation = "tanh",
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_layers < 1:
            raise LanggroundError(f"sru num_layers {num_layers}: expected >= 1")
        self.input_size, self.hidden_size, self.num_layers = (
            int(input_size),
            int(hidden_size),
            int(num_layers),
        )
        self.rnn_lst = nn.ModuleList(
            SRUCell(
                input_size if i == 0 else hidden_size,
                hidden_size,
                activation,
                dropout if i + 1 < num_layers else 0.0,
            )
            for i in range(num_layers)
        )

    def forward(
        self, x: Tensor, mask: Tensor | None = None, c0: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise LanggroundError(f"SRU input must be (T, B, {self.input_size}), got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise LanggroundError(f"SRU mask must be (T, B) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        finals = []
        h = x
        for i, layer in enumerate(self.rnn_lst):
            h, c = layer(h, mask, None if c0 is None else c0[i])
            finals.append(c)
        return h, torch.stack(finals)

    def final_hidden(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, hidden_size)``: the last layer's ``h`` at each sequence's last real step."""
        h, _ = self(x, mask)
        return last_valid(h, mask)
