"""Torch ``Dataset`` over grounding records: decodes the image and mask, applies the transforms."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from langground.data.images import load_image
from langground.errors import DataError
from langground.types import GroundingRecord


class GroundingTorchDataset(Dataset):
    """Turns records into transformed samples.

    Each item is a dict with ``image`` (float ``(3, S, S)``), ``boxes`` (``(K, 4)`` xyxy on the
    canvas), ``mask`` (``(1, S, S)`` uint8, or absent), ``text``, ``letterbox`` (scale, pad_x, pad_y),
    ``answer_id`` (int, -1 if none), ``record`` (the GroundingRecord without its mask loader) and
    ``index``.

    Args:
        records: any sequence of GroundingRecord (e.g. from ``open_dataset``).
        transform: a pipeline from :func:`langground.data.transforms.build_transforms`.
        answer_vocab: answer string → id, for VQA; answers outside it get -1.
        load_masks: decode referent masks (needed for RES/GRES training and evaluation).
        cache_mb: keep up to this many MB of decoded images in memory (per process; 0: none).
    """

    def __init__(
        self,
        records: Sequence[GroundingRecord],
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        answer_vocab: dict[str, int] | None = None,
        load_masks: bool = False,
        cache_mb: float = 0,
    ):
        self.records = records
        self.transform = transform
        self.answer_vocab = answer_vocab
        self.load_masks = load_masks
        # Decoded images kept per process (each image serves several expressions), up to a budget.
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[str, torch.Tensor] | None = {} if self.cache_bytes > 0 else None
        self._cache_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def _pixels(self, record: GroundingRecord) -> torch.Tensor:
        """The decoded ``(3, H, W)`` uint8 image, from the cache when it holds it."""
        pixels = self._cache.get(record.image_path) if self._cache is not None else None
        if pixels is None:
            pixels = F.pil_to_tensor(load_image(record.image_path, record.sample_id))
            if self._cache is not None and self._cache_bytes + pixels.numel() <= self.cache_bytes:
                self._cache[record.image_path] = pixels
                self._cache_bytes += pixels.numel()
        return pixels

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        pixels = self._pixels(record)
        height, width = pixels.shape[-2:]
        if (height, width) != tuple(record.image_size):
            raise DataError(
                f"{record.image_path}: image is {height}x{width} but the annotation of sample "
                f"{record.sample_id} says {record.image_size[0]}x{record.image_size[1]}"
            )
        sample: dict[str, Any] = {
            "image": tv_tensors.Image(pixels),
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(np.asarray(record.boxes, np.float32).reshape(-1, 4)),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "text": record.text,
        }
        if self.load_masks:
            mask = record.load_mask()
            if mask is None:
                raise DataError(f"sample {record.sample_id} of {record.dataset or 'dataset'} has no mask")
            sample["mask"] = tv_tensors.Mask(torch.as_tensor(mask, dtype=torch.uint8)[None])
        out = self.transform(sample)
        # Without its mask loader: pickling the loader would send the dataset's whole index through the
        # worker pipe with every sample (megabytes); ``index`` finds the full record again.
        out["record"] = dataclasses.replace(record, mask_loader=None) if record.mask_loader else record
        out["index"] = index
        answer = record.answer
        vocab = self.answer_vocab
        out["answer_id"] = vocab.get(answer, -1) if (vocab is not None and answer is not None) else -1
        return out
