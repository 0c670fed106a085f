"""Collate transformed samples into a :class:`langground.types.Batch`."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_convert

from langground.text.vocab import Vocabulary
from langground.types import Batch, Targets


class GroundingCollator:
    """Stacks images, pads text with the vocabulary, normalises target boxes to cxcywh in [0, 1].

    Picklable, so it can be handed to DataLoader workers.
    """

    def __init__(self, vocab: Vocabulary, max_text_length: int):
        self.vocab = vocab
        self.max_text_length = max_text_length

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        images = torch.stack([s["image"].as_subclass(torch.Tensor) for s in samples])
        size = images.shape[-1]
        boxes = []
        for s in samples:
            xyxy = s["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4)
            boxes.append(box_convert(xyxy, "xyxy", "cxcywh") / size)
        masks = None
        if all("mask" in s for s in samples):
            masks = torch.stack([s["mask"].as_subclass(torch.Tensor) for s in samples]).float()
        targets = Targets(
            boxes=boxes,
            masks=masks,
            no_target=torch.tensor([s["record"].no_target for s in samples], dtype=torch.bool),
            answers=torch.tensor([s["answer_id"] for s in samples], dtype=torch.long),
        )
        text = self.vocab.batch([s["text"] for s in samples], self.max_text_length)
        return Batch(
            images=images,
            text=text,
            targets=targets,
            records=[s["record"] for s in samples],
            transforms=[s["letterbox"] for s in samples],
            indices=[int(s.get("index", -1)) for s in samples],
        )
