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
from typing import Any

import numpy as np
import torch
from torch import Tensor

# Task names are those of the task registry (``langground.tasks.list_tasks()``): rec, res, gref, gres, vqa,
# phrase, retrieval, and any task a user registers.
Task = str


@dataclass
class Phrase:
    """One phrase of a caption and the boxes it refers to (Flickr30k Entities, MDETR ``tokens_positive``).

    Attributes:
        span: ``(start, end)`` character offsets of the phrase in the record's ``text`` (``text[start:end]``).
        boxes: ``(K, 4)`` float32 absolute xyxy pixels of the original image (``K == 0``: nothing to ground).
        phrase_id: the dataset's id of the phrase / entity (a string), when it has one.
        family: phrase type (Flickr30k: people, clothing, ...), when known.
    """

    span: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    phrase_id: str = ""
    family: str | None = None


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
        phrases: the phrases of a caption with their boxes (task ``phrase``), else empty.
        answers: every human answer of a VQA question (VQAv2: ten), when the dataset has several;
            ``answer`` is then the most common one.
        meta: anything else a loader wants to keep.
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
    phrases: tuple[Phrase, ...] = ()
    answers: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_mask(self) -> bool:
        return self.mask_loader is not None

    def load_mask(self) -> np.ndarray | None:
        """Decode the union mask of the referents, ``(H, W)`` uint8, or ``None`` if unavailable."""
        return None if self.mask_loader is None else self.mask_loader()


@dataclass
class TextBatch:
    """Padded token ids for a batch of N expressions (or captions) about B images.

    Attributes:
        token_ids: ``(N, L)`` int64, padded with the vocabulary's pad id (0).
        attention_mask: ``(N, L)`` bool, True at real tokens.
        texts: the N strings the ids were made from (for encoders with their own tokenizer,
            explanations and logging).
        tokens: the N word lists after tokenisation/truncation (aligned with ``token_ids`` columns).
        image_index: ``(N,)`` int64, the image of the batch each expression is about; ``None`` means
            one expression per image (``arange(N)``). Several expressions of one image share its
            decode and, in models whose vision does not read the text, its encoding.
    """

    token_ids: Tensor
    attention_mask: Tensor
    texts: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)
    image_index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(dim=1)

    def images_per_text(self, images: Tensor) -> Tensor:
        """``images`` ``(B, ...)`` -> ``(N, ...)``: each expression's image (no copy when one per image)."""
        if self.image_index is None:
            return images
        return images.index_select(0, self.image_index.to(images.device))

    def to(self, device: torch.device | str) -> TextBatch:
        index = None if self.image_index is None else self.image_index.to(device)
        return TextBatch(
            self.token_ids.to(device), self.attention_mask.to(device), self.texts, self.tokens, index
        )


@dataclass
class PhraseQueries:
    """Q phrase queries per expression row: token spans of the phrases to ground (task ``phrase``).

    Attributes:
        spans: ``(N, Q, 2)`` int64 ``[start, end)`` column spans into ``TextBatch.token_ids``.
        mask: ``(N, Q)`` bool, True at real queries (rows have different numbers of phrases).

    Models answer with ``(N, Q, ...)`` predictions (``pred_boxes`` ``(N, Q, 4)``); padded queries are
    ignored by losses and postprocessing.
    """

    spans: Tensor
    mask: Tensor

    @property
    def num_queries(self) -> int:
        return int(self.spans.shape[1])

    def to(self, device: torch.device | str) -> PhraseQueries:
        return PhraseQueries(self.spans.to(device), self.mask.to(device))


@dataclass
class Targets:
    """Training / evaluation targets for a batch of N expressions, in the model's input canvas.

    Attributes:
        boxes: list of N tensors ``(K_i, 4)`` normalized cxcywh (``K_i == 0``: no target / VQA).
        masks: ``(N, 1, H, W)`` float {0, 1} union masks on the input canvas, or ``None``.
        no_target: ``(N,)`` bool.
        answers: ``(N,)`` int64 answer ids, ``-1`` where the sample has no answer.
        phrase_boxes: per expression, per phrase query, ``(K, 4)`` normalized cxcywh boxes (task
            ``phrase``), else ``None``.
        image_index: ``(N,)`` the image of each expression (as ``TextBatch.image_index``), or ``None``.
    """

    boxes: list[Tensor]
    masks: Tensor | None
    no_target: Tensor
    answers: Tensor
    phrase_boxes: list[list[Tensor]] | None = None
    image_index: Tensor | None = None

    def to(self, device: torch.device | str) -> Targets:
        return Targets(
            [b.to(device) for b in self.boxes],
            None if self.masks is None else self.masks.to(device),
            self.no_target.to(device),
            self.answers.to(device),
            None if self.phrase_boxes is None else [[b.to(device) for b in row] for row in self.phrase_boxes],
            None if self.image_index is None else self.image_index.to(device),
        )


@dataclass
class Batch:
    """What the data loader yields: model inputs, targets and the records for metrics.

    ``images`` holds B distinct images and ``text`` N >= B expressions (``text.image_index`` maps them);
    ``records``, ``transforms`` and ``indices`` are per expression. ``phrases`` carries the phrase
    queries of task ``phrase``.

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
    phrases: PhraseQueries | None = None

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``model(...)``: ``images``, ``text`` and, when present, ``phrases``."""
        inputs: dict[str, Any] = {"images": self.images, "text": self.text}
        if self.phrases is not None:
            inputs["phrases"] = self.phrases
        return inputs

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=True),
            self.text.to(device),
            self.targets.to(device),
            self.records,
            self.transforms,
            self.indices,
            None if self.phrases is None else self.phrases.to(device),
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
        phrases: task ``phrase``: one prediction per phrase of the caption, in ``record.phrases`` order.
    """

    boxes: np.ndarray
    scores: np.ndarray
    mask: np.ndarray | None = None
    no_target: float | None = None
    answer: str | None = None
    answer_score: float | None = None
    attention: dict[str, np.ndarray] | None = None
    phrases: list[Prediction] | None = None
