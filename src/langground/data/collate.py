"""Collate transformed samples into a :class:`langground.types.Batch`.

A sample is one expression (:class:`~langground.data.torch_dataset.GroundingTorchDataset`) or one image
with its expressions (:class:`~langground.data.torch_dataset.GroupedByImageDataset`, key
``expressions``). The batch stacks the B images once and the N expressions as rows; ``text.image_index``
and ``targets.image_index`` map row n to its image (``None`` when every image has one expression).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert

from langground.text.spans import char_to_token_spans
from langground.text.vocab import Vocabulary
from langground.types import Batch, PhraseQueries, Targets


class GroundingCollator:
    """Stacks images, pads text with the vocabulary, normalises target boxes to cxcywh in [0, 1].

    Phrases (task ``phrase``): each record's character spans become ``[start, end)`` token column spans
    (:mod:`langground.text.spans`, truncated to ``max_text_length``; a phrase cut off entirely gets
    ``mask`` False) in ``Batch.phrases`` ``(N, Q, 2)``, Q the most phrases of a row, and their boxes
    ``Targets.phrase_boxes[n][q]`` (``(K, 4)`` cxcywh, empty for padded queries).

    Args:
        phrases: emit phrase queries always (True), never (False) or when a record of the batch has
            phrases (None).

    Picklable, so it can be handed to DataLoader workers.
    """

    def __init__(self, vocab: Vocabulary, max_text_length: int, phrases: bool | None = None):
        self.vocab = vocab
        self.max_text_length = max_text_length
        self.phrases = phrases

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        images = torch.stack([s["image"].as_subclass(torch.Tensor) for s in samples])
        size = images.shape[-1]
        rows: list[dict[str, Any]] = []
        image_of_row: list[int] = []
        transforms = []
        for b, s in enumerate(samples):
            for expr in s.get("expressions", [s]):
                rows.append(expr)
                image_of_row.append(b)
                transforms.append(s["letterbox"])
        boxes = [_normalised(r["boxes"], size) for r in rows]
        masks = None
        if all("mask" in r for r in rows):
            masks = torch.stack([r["mask"].as_subclass(torch.Tensor).reshape(1, size, size) for r in rows])
            masks = masks.float()
        shared = len(rows) != len(samples)
        image_index = torch.tensor(image_of_row, dtype=torch.long) if shared else None
        text = self.vocab.batch([r["text"] for r in rows], self.max_text_length)
        text.image_index = image_index
        phrases, phrase_boxes = None, None
        want = self.phrases if self.phrases is not None else any(r["record"].phrases for r in rows)
        if want:
            phrases, phrase_boxes = self._phrases(rows, size)
        targets = Targets(
            boxes=boxes,
            masks=masks,
            no_target=torch.tensor([r["record"].no_target for r in rows], dtype=torch.bool),
            answers=torch.tensor([r["answer_id"] for r in rows], dtype=torch.long),
            phrase_boxes=phrase_boxes,
            image_index=image_index,
        )
        return Batch(
            images=images,
            text=text,
            targets=targets,
            records=[r["record"] for r in rows],
            transforms=transforms,
            indices=[int(r.get("index", -1)) for r in rows],
            phrases=phrases,
        )

    def _phrases(self, rows: list[dict[str, Any]], size: int) -> tuple[PhraseQueries, list[list[Tensor]]]:
        counts = [len(r.get("phrase_spans", ())) for r in rows]
        q = max(1, *counts)
        spans = torch.zeros((len(rows), q, 2), dtype=torch.long)
        mask = torch.zeros((len(rows), q), dtype=torch.bool)
        boxes: list[list[Tensor]] = []
        empty = torch.zeros((0, 4))
        for n, r in enumerate(rows):
            columns = char_to_token_spans(r["text"], r.get("phrase_spans", ()), self.max_text_length)
            for j, col in enumerate(columns):
                if col is not None:
                    spans[n, j] = torch.tensor(col)
                    mask[n, j] = True
            row_boxes = [_normalised(b, size) for b in r.get("phrase_boxes", ())]
            boxes.append(row_boxes + [empty] * (q - len(row_boxes)))
        return PhraseQueries(spans, mask), boxes


def _normalised(xyxy: Tensor, size: int) -> Tensor:
    """Canvas xyxy pixels -> cxcywh in [0, 1] of the ``size x size`` canvas."""
    return box_convert(xyxy.as_subclass(torch.Tensor).float().reshape(-1, 4), "xyxy", "cxcywh") / size
