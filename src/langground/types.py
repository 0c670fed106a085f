"""The data contract shared by data loaders, models, the engine and inference.

Conventions (see docs/architecture.md):
- On disk, in records and in predictions: boxes are absolute ``xyxy`` pixels of the ORIGINAL image
  (float, no +1 convention).
- Inside models: boxes are normalized ``cxcywh`` in [0, 1] of the model's input canvas.
- Masks are boolean/uint8 ``(H, W)`` arrays in original-image pixels; models emit logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Task = Literal["rec", "res", "gref", "gres", "vqa"]
TASKS: tuple[str, ...] = ("rec", "res", "gref", "gres", "vqa")


@dataclass
class GroundingRecord:
    """One expression (or question) about one image, as indexed: cheap, no pixels decoded.

    Attributes:
        sample_id: unique id inside the dataset split (e.g. the sentence id), as a string.
        image_id: the image's id in its dataset.
        image_path: absolute path of the image file.
        image_size: ``(height, width)`` of the original image in pixels.
        text: the expression or question as the model should read it (``sent`` for refer layouts).
        boxes: ``(K, 4)`` float32 absolute xyxy pixels, one per referent; ``K == 0`` for no-target
            expressions and for VQA questions.
        no_target: True when the expression refers to nothing in the image (gRefCOCO ``no_target``).
        dataset / split: where the record comes from.
        raw_text: the original, un-normalised text (``raw`` in refer layouts), when known.
        family: expression / question family (synthetic world, CLEVR), else ``None``.
        answer: VQA answer string, else ``None``.
        program: functional program that produced the expression/question, when known.
        ref_id / ann_ids: ids in refer/gRefCOCO layouts (``ann_ids`` empty for no-target).
        mask_loader: zero-argument callable that decodes the union mask of the referents as a
            ``(H, W)`` uint8 array (all zeros for no-target); ``None`` when the dataset has no masks.
        meta: anything else a loader wants to keep (e.g. ``tokens_positive`` spans).
    """

    sample_id: str
    image_id: int | str
    image_path: str
    image_size: tuple[int, int]
    text: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    no_target: bool = False
    dataset: str = ""
    split: str = ""
    raw_text: str | None = None
    family: str | None = None
    answer: str | None = None
    program: list[dict[str, Any]] | None = None
    ref_id: int | str | None = None
    ann_ids: tuple[int, ...] = ()
    mask_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_mask(self) -> bool:
        return self.mask_loader is not None

    def load_mask(self) -> np.ndarray | None:
        """Decode the union mask of the referents, ``(H, W)`` uint8, or ``None`` if unavailable."""
        return None if self.mask_loader is None else self.mask_loader()


@dataclass
class TextBatch:
    """Padded token ids for a batch of expressions.

    Attributes:
        token_ids: ``(B, L)`` int64, padded with the vocabulary's pad id (0).
        attention_mask: ``(B, L)`` bool, True at real tokens.
        texts: the B strings the ids were made from (for encoders with their own tokenizer,
            explanations and logging).
        tokens: the B word lists after tokenisation/truncation (aligned with ``token_ids`` columns).
    """

    token_ids: Tensor
    attention_mask: Tensor
    texts: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(self.token_ids.to(device), self.attention_mask.to(device), self.texts, self.tokens)


@dataclass
class Targets:
    """Training / evaluation targets for a batch, in the model's input canvas.

    Attributes:
        boxes: list of B tensors ``(K_i, 4)`` normalized cxcywh (``K_i == 0``: no target / VQA).
        masks: ``(B, 1, H, W)`` float {0, 1} union masks on the input canvas, or ``None``.
        no_target: ``(B,)`` bool.
        answers: ``(B,)`` int64 answer ids, ``-1`` where the sample has no answer.
    """

    boxes: list[Tensor]
    masks: Tensor | None
    no_target: Tensor
    answers: Tensor

    def to(self, device: torch.device | str) -> Targets:
        return Targets(
            [b.to(device) for b in self.boxes],
            None if self.masks is None else self.masks.to(device),
            self.no_target.to(device),
            self.answers.to(device),
        )


@dataclass
class Batch:
    """What the data loader yields: model inputs, targets and the records for metrics.

    ``records`` come without their ``mask_loader`` (a loader drags its whole dataset through the worker
    pipe); ``indices`` find the full records, masks included, in the dataset that yielded the batch.

    ``transforms`` holds, per sample, the affine map from the input canvas back to original pixels:
    ``(scale, pad_x, pad_y)`` so that ``orig = (canvas - pad) / scale``.
    """

    images: Tensor
    text: TextBatch
    targets: Targets
    records: list[GroundingRecord]
    transforms: list[tuple[float, float, float]]
    indices: list[int] = field(default_factory=list)  # positions of the records in the dataset

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=True),
            self.text.to(device),
            self.targets.to(device),
            self.records,
            self.transforms,
            self.indices,
        )


@dataclass
class Prediction:
    """A model's answer for one expression, in ORIGINAL image pixels.

    Attributes:
        boxes: ``(K, 4)`` float32 xyxy pixels (REC: K = 1; generalized REC: any K, 0 for no target).
        scores: ``(K,)`` confidences of ``boxes``.
        mask: ``(H, W)`` bool, or ``None`` for box-only models.
        no_target: probability that the expression refers to nothing, or ``None``.
        answer / answer_score: VQA answer, or ``None``.
        attention: optional ``{name: (h, w) float array}`` explanation maps.
    """

    boxes: np.ndarray
    scores: np.ndarray
    mask: np.ndarray | None = None
    no_target: float | None = None
    answer: str | None = None
    answer_score: float | None = None
    attention: dict[str, np.ndarray] | None = None
