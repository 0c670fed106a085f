"""Exponential moving average of the weights (torch.optim.swa_utils.AveragedModel underneath).

``W_ema <- d * W_ema + (1 - d) * W`` after every optimiser step, buffers (BatchNorm statistics) included.
With warm-up the decay ramps as ``d_n = min(d, (1 + n) / (10 + n))`` over the ``n`` updates so far, so a
short run is not dominated by the random initialisation.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


class ModelEma:
    """Keeps ``module`` (an averaged copy of the model, in eval mode) up to date."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)

        @torch.no_grad()
        def ema_update(ema: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
            d = ema_decay_at(int(n_averaged), self.decay, self.warmup)
            if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
                torch._foreach_lerp_(ema, current, 1.0 - d)
            else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
                for e, c in zip(ema, current, strict=True):
                    e.copy_(c)

        # AveragedModel deep-copies the model; never the DDP wrapper, always the bare module.
        self.averaged = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class as the trained one)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @property
    def num_updates(self) -> int:
        return int(self.averaged.n_averaged)

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])

    def copy_model(self) -> nn.Module:
        """A detached copy of the averaged weights (e.g. to keep the best ones)."""
        return copy.deepcopy(self.module)
