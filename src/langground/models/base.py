"""The model contract every registered grounding model follows (see docs/architecture.md).

``forward(images: (B, 3, H, W) ImageNet-normalized, text: TextBatch) -> dict`` with any of

- ``pred_boxes``: ``(B, 4)`` normalized cxcywh on the input canvas; ``pred_scores``: ``(B,)``;
- ``pred_box_set`` / ``pred_box_logits``: ``(B, N, 4)`` / ``(B, N)`` every candidate box and its
  logit (dense heads; generalized REC keeps all boxes above a threshold);
- ``pred_masks``: ``(B, 1, h, w)`` logits at any stride <= 4 of the canvas;
- ``pred_no_target``: ``(B,)`` logits that the expression refers to nothing (gref / gres);
- ``pred_answer``: ``(B, A)`` answer logits (vqa);
- phrase queries (``phrases`` given): ``pred_boxes`` ``(B, Q, 4)`` and optionally ``pred_scores`` ``(B, Q)``;
- retrieval: ``pred_image_embed`` ``(B_img, D)`` and ``pred_text_embed`` ``(B, D)``, L2-normalised, and
  optionally ``logit_scale`` (a scalar tensor);
- ``aux_outputs``: a list of per-layer prediction dicts (DETR-style decoders), scored by the task loss
  with their own weights; ``losses``: the model's own named terms (``{"loss_mi": ...}``);
- ``aux``: explanations and head geometry, e.g. ``aux["attention"]``: ``{stage: (B, L, h, w)}``.

Here B counts expressions (text rows). ``images`` holds one image per expression, or, when
``text.image_index`` is set, the distinct images that the rows index (models whose vision does not read
the text encode each once). The task decides which heads a model builds: ``"mask" in self.spec.heads``.

A model may also declare ``loss_weights`` (defaults of its own terms), ``build_loss_modules()`` (stateful
loss modules the criterion holds), ``on_epoch_start(epoch)`` and ``training_step(batch, criterion,
forward)`` (a custom step, e.g. for two-phase schedules); the engine uses them when present.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.tasks import Task, get_task
from langground.types import PhraseQueries, TextBatch


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
        spec = get_task(task)
        if task not in self.supported_tasks:
            raise LanggroundError(
                f"{type(self).__name__} does not support task {task!r}; it supports {', '.join(self.supported_tasks)}"
            )
        if vocab_size < 2:
            raise LanggroundError(f"vocab_size must be at least 2 (pad and unk), got {vocab_size}")
        if spec.needs_answers and num_answers < 1:
            raise LanggroundError(f"task {task!r} needs num_answers >= 1 (the size of the answer vocabulary)")
        if input_size % self.size_divisor:
            raise LanggroundError(f"input_size {input_size} must be a multiple of {self.size_divisor}")
        self.task = task
        self.spec: Task = spec
        self.input_size = int(input_size)
        self.max_text_length = int(max_text_length)
        self.vocab_size = int(vocab_size)
        self.num_answers = int(num_answers)
        self.model_config: dict[str, Any] = dict(model_config or {})

    # ------------------------------------------------------------------ validation
    def validate_inputs(self, images: Tensor, text: TextBatch, phrases: PhraseQueries | None = None) -> None:
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
        if text.image_index is None and images.shape[0] != ids.shape[0]:
            raise LanggroundError(
                f"batch-size mismatch: {images.shape[0]} images but {ids.shape[0]} expressions "
                "(several expressions per image need text.image_index)"
            )
        if text.image_index is not None:
            index = text.image_index
            if index.shape != (ids.shape[0],):
                raise LanggroundError(
                    f"text.image_index must have shape ({ids.shape[0]},) (one image per expression), got "
                    f"{tuple(index.shape)}"
                )
            if bool(((index < 0) | (index >= images.shape[0])).any()):
                raise LanggroundError(
                    f"text.image_index values must lie in [0, {images.shape[0]}) (the batch's images), got "
                    f"{index.min().item()}..{index.max().item()}"
                )
        if phrases is not None:
            if phrases.spans.shape[:1] != ids.shape[:1] or phrases.spans.shape[-1:] != (2,):
                raise LanggroundError(
                    f"phrases.spans must have shape ({ids.shape[0]}, Q, 2), got {tuple(phrases.spans.shape)}"
                )
            if phrases.mask.shape != phrases.spans.shape[:2]:
                raise LanggroundError(
                    f"phrases.mask shape {tuple(phrases.mask.shape)} does not match spans "
                    f"{tuple(phrases.spans.shape[:2])}"
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
    def forward(
        self, images: Tensor, text: TextBatch, phrases: PhraseQueries | None = None
    ) -> dict[str, Any]:
        self.validate_inputs(images, text, phrases)
        if phrases is None:
            return self.forward_unchecked(images, text)
        return self.forward_unchecked(images, text, phrases=phrases)

    def forward_unchecked(self, images: Tensor, text: TextBatch, **queries: Any) -> dict[str, Any]:
        """The forward pass without input validation (what ``torch.compile`` should wrap)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"task={self.task!r}, input_size={self.input_size}, vocab_size={self.vocab_size}"
