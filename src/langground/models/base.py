"""The model contract every registered grounding model follows (see docs/architecture.md).

``forward(images: (B, 3, H, W) ImageNet-normalized, text: TextBatch) -> dict`` with any of

- ``pred_boxes``: ``(B, 4)`` normalized cxcywh on the input canvas; ``pred_scores``: ``(B,)``;
- ``pred_box_set`` / ``pred_box_logits``: ``(B, N, 4)`` / ``(B, N)`` every candidate box and its
  logit (dense heads; generalized REC keeps all boxes above a threshold);
- ``pred_masks``: ``(B, 1, h, w)`` logits at any stride <= 4 of the canvas;
- ``pred_no_target``: ``(B,)`` logits that the expression refers to nothing (gref / gres);
- ``pred_answer``: ``(B, A)`` answer logits (vqa);
- ``aux``: explanations and head geometry, e.g. ``aux["attention"]``: ``{stage: (B, L, h, w)}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.types import TASKS, TextBatch


class GroundingModel(nn.Module):
    """Base class: task bookkeeping, rebuildable config and input validation.

    Subclasses set ``supported_tasks`` and implement :meth:`forward_unchecked`; :meth:`forward`
    validates the inputs first. ``model_config`` is a plain (YAML-safe) dict such that
    ``create_model(name, **model_config)`` rebuilds the same architecture.
    """

    supported_tasks: ClassVar[tuple[str, ...]] = ()
    #: images must have sides divisible by this (the network's total stride)
    size_divisor: ClassVar[int] = 1

    def __init__(
        self,
        task: str,
        input_size: int,
        max_text_length: int,
        vocab_size: int,
        num_answers: int = 0,
        model_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        if task not in TASKS:
            raise LanggroundError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if task not in self.supported_tasks:
            raise LanggroundError(
                f"{type(self).__name__} does not support task {task!r}; it supports {', '.join(self.supported_tasks)}"
            )
        if vocab_size < 2:
            raise LanggroundError(f"vocab_size must be at least 2 (pad and unk), got {vocab_size}")
        if task == "vqa" and num_answers < 1:
            raise LanggroundError("task 'vqa' needs num_answers >= 1 (the size of the answer vocabulary)")
        if input_size % self.size_divisor:
            raise LanggroundError(f"input_size {input_size} must be a multiple of {self.size_divisor}")
        self.task = task
        self.input_size = int(input_size)
        self.max_text_length = int(max_text_length)
        self.vocab_size = int(vocab_size)
        self.num_answers = int(num_answers)
        self.model_config: dict[str, Any] = dict(model_config or {})

    # ------------------------------------------------------------------ validation
    def validate_inputs(self, images: Tensor, text: TextBatch) -> None:
        """Raise a one-line ``ValueError`` (LanggroundError) for inputs the model cannot take."""
        if not isinstance(images, Tensor):
            raise LanggroundError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
        if images.dim() != 4:
            raise LanggroundError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] != 3:
            raise LanggroundError(f"images must have 3 channels (RGB), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise LanggroundError(f"images must be a float tensor (ImageNet-normalized), got {images.dtype}")
        h, w = images.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise LanggroundError(
                f"image size {h}x{w} is not a multiple of {self.size_divisor} (the network's stride); "
                f"letterbox to input_size={self.input_size}"
            )
        if not isinstance(text, TextBatch):
            raise LanggroundError(f"text must be a TextBatch, got {type(text).__name__}")
        ids, mask = text.token_ids, text.attention_mask
        if ids.dim() != 2 or ids.shape[0] == 0:
            raise LanggroundError(
                f"empty text batch: token_ids must be (B, L) with B >= 1, got {tuple(ids.shape)}"
            )
        if ids.shape[1] == 0:
            raise LanggroundError("empty text batch: the expressions have no tokens (L = 0)")
        if ids.shape[1] > self.max_text_length:
            raise LanggroundError(
                f"expressions have {ids.shape[1]} tokens, more than max_text_length={self.max_text_length}; "
                "truncate them (Vocabulary.batch does)"
            )
        if mask.shape != ids.shape:
            raise LanggroundError(
                f"attention_mask shape {tuple(mask.shape)} does not match token_ids shape {tuple(ids.shape)}"
            )
        if images.shape[0] != ids.shape[0]:
            raise LanggroundError(
                f"batch-size mismatch: {images.shape[0]} images but {ids.shape[0]} expressions"
            )
        if ids.dtype not in (torch.int64, torch.int32):
            raise LanggroundError(f"token_ids must be int64, got {ids.dtype}")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bool(bad.any()):
            r, c = (int(v) for v in bad.nonzero()[0])
            raise LanggroundError(
                f"token id {int(ids[r, c])} at [{r}, {c}] is outside the vocabulary of {self.vocab_size} words"
            )
        empty = ~mask.bool().any(dim=1)
        if bool(empty.any()):
            r = int(empty.nonzero()[0, 0])
            raise LanggroundError(f"expression {r} has no tokens (its attention_mask is all False)")

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, text: TextBatch) -> dict[str, Any]:
        self.validate_inputs(images, text)
        return self.forward_unchecked(images, text)

    def forward_unchecked(self, images: Tensor, text: TextBatch) -> dict[str, Any]:
        """The forward pass without input validation (what ``torch.compile`` should wrap)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"task={self.task!r}, input_size={self.input_size}, vocab_size={self.vocab_size}"
