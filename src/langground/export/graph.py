"""A grounding model as a traceable function of tensors: ``(images, token_ids, attention_mask) -> outputs``.

The model contract's ``forward(images, TextBatch) -> dict`` takes a dataclass and returns a nested
dict; ONNX wants flat tensors in and out. :class:`TensorGraph` rebuilds the :class:`TextBatch` from the
two text tensors (one image per expression: no ``image_index``) and returns the model's top-level tensor
outputs in a fixed order (``aux`` explanations, ``aux_outputs`` and ``losses`` are not exported).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from langground.types import TextBatch

__all__ = ["INPUTS", "SKIPPED_OUTPUTS", "TensorGraph", "tensor_outputs"]

INPUTS = ("images", "token_ids", "attention_mask")
SKIPPED_OUTPUTS = ("aux", "aux_outputs", "losses")


def tensor_outputs(out: dict[str, Any]) -> list[str]:
    """The names of the model's top-level tensor outputs, in the model's order."""
    return [k for k, v in out.items() if k not in SKIPPED_OUTPUTS and isinstance(v, Tensor)]


class TensorGraph(nn.Module):
    """``model`` as ``(images (N,3,S,S), token_ids (N,L) int64, attention_mask (N,L) bool) -> tuple``."""

    def __init__(self, model: nn.Module, output_names: list[str] | None = None):
        super().__init__()
        self.model = model
        self.output_names = list(output_names or [])
        self.example_shapes: dict[str, tuple[int, ...]] = {}

    def forward(self, images: Tensor, token_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        out = self.model.forward_unchecked(images, TextBatch(token_ids, attention_mask.bool()))
        if not self.output_names:
            self.output_names = tensor_outputs(out)
        return tuple(out[k] for k in self.output_names)

    @torch.no_grad()
    def discover(self, images: Tensor, token_ids: Tensor, attention_mask: Tensor) -> list[str]:
        """Run once eagerly to fix the output names (the task decides which heads exist)."""
        self.output_names = []
        values = self(images, token_ids, attention_mask)
        self.example_shapes = {k: tuple(v.shape) for k, v in zip(self.output_names, values, strict=True)}
        return self.output_names
