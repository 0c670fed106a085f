"""Torch ``Dataset`` over grounding records: decodes the image and mask, applies the transforms.

Two item shapes, both read by :class:`langground.data.collate.GroundingCollator`:

- :class:`GroundingTorchDataset`: one item per record (expression);
- :class:`GroupedByImageDataset` (``data.group_by_image``): one item per image with all its expressions
  (in groups of at most ``max_queries_per_image``), decoded and augmented ONCE: one random crop, flip and
  colour jitter per image, so the boxes and masks of every expression move together and the flip's
  left/right word swap applies to every expression's text.
"""

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
    """Turns records into transformed samples, one per record.

    Each item is a dict with ``image`` (float ``(3, S, S)``), ``boxes`` (``(K, 4)`` xyxy on the
    canvas), ``mask`` (``(1, S, S)`` uint8, or absent), ``text``, ``letterbox`` (scale, pad_x, pad_y),
    ``answer_id`` (int, -1 if none), ``record`` (the GroundingRecord without its mask loader),
    ``index`` and, for records with phrases, ``phrase_spans`` (character spans in ``text``, after the
    flip's word swap) and ``phrase_boxes`` (per phrase, ``(K, 4)`` xyxy on the canvas).

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

    def item_lengths(self) -> list[int]:
        """Word count of each item's text (the length curriculum's measure)."""
        return [len(_peek(self.records, i).text.split()) for i in range(len(self.records))]

    def _pixels(self, record: GroundingRecord) -> torch.Tensor:
        """The decoded ``(3, H, W)`` uint8 image, from the cache when it holds it."""
        pixels = self._cache.get(record.image_path) if self._cache is not None else None
        if pixels is None:
            pixels = F.pil_to_tensor(load_image(record.image_path, record.sample_id))
            if self._cache is not None and self._cache_bytes + pixels.numel() <= self.cache_bytes:
                self._cache[record.image_path] = pixels
                self._cache_bytes += pixels.numel()
        return pixels

    def _load(self, indices: Sequence[int]) -> dict[str, Any]:
        """Decode the image of records ``indices`` (all of one image) once, transform it once with the
        boxes, masks and texts of every record, and split them back per record.

        Returns ``{"image", "letterbox", "expressions": [per-record dict]}``.
        """
        records = [self.records[i] for i in indices]
        first = records[0]
        pixels = self._pixels(first)
        height, width = pixels.shape[-2:]
        for record in records:
            if record.image_path != first.image_path:
                raise DataError(
                    f"samples {first.sample_id} and {record.sample_id} share an item but not an image "
                    f"({first.image_path} vs {record.image_path})"
                )
            if (height, width) != tuple(record.image_size):
                raise DataError(
                    f"{record.image_path}: image is {height}x{width} but the annotation of sample "
                    f"{record.sample_id} says {record.image_size[0]}x{record.image_size[1]}"
                )
        # Every box of every record (its referents, then each phrase's boxes) in one tensor, so the
        # geometric transforms move them all with the pixels; ``parts`` cuts them apart again.
        parts: list[list[int]] = []
        flat: list[np.ndarray] = []
        for record in records:
            groups = [record.boxes, *(p.boxes for p in record.phrases)]
            parts.append([len(np.asarray(g).reshape(-1, 4)) for g in groups])
            flat.extend(np.asarray(g, np.float32).reshape(-1, 4) for g in groups)
        sample: dict[str, Any] = {
            "image": tv_tensors.Image(pixels),
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(np.concatenate(flat) if flat else np.zeros((0, 4), np.float32)),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "text": [r.text for r in records],
            "no_target": any(r.no_target for r in records),
        }
        if any(r.phrases for r in records):
            sample["phrase_spans"] = [[tuple(p.span) for p in r.phrases] for r in records]
        if self.load_masks:
            masks = []
            for record in records:
                mask = record.load_mask()
                if mask is None:
                    raise DataError(f"sample {record.sample_id} of {record.dataset or 'dataset'} has no mask")
                masks.append(torch.as_tensor(mask, dtype=torch.uint8))
            sample["mask"] = tv_tensors.Mask(torch.stack(masks))
        out = self.transform(sample)
        boxes = out["boxes"].as_subclass(torch.Tensor)
        expressions = []
        start = 0
        for j, (record, index) in enumerate(zip(records, indices, strict=True)):
            cuts = []
            for n in parts[j]:
                cuts.append(boxes[start : start + n])
                start += n
            expr: dict[str, Any] = {
                "boxes": cuts[0],
                "text": out["text"][j],
                # Without its mask loader: pickling the loader would send the dataset's whole index
                # through the worker pipe with every sample (megabytes); ``index`` finds it again.
                "record": dataclasses.replace(record, mask_loader=None) if record.mask_loader else record,
                "index": int(index),
                "answer_id": self._answer_id(record),
            }
            if record.phrases:
                expr["phrase_spans"] = list(out["phrase_spans"][j])
                expr["phrase_boxes"] = cuts[1:]
            if "mask" in out:
                expr["mask"] = out["mask"][j : j + 1].as_subclass(torch.Tensor)
            expressions.append(expr)
        return {"image": out["image"], "letterbox": out["letterbox"], "expressions": expressions}

    def _answer_id(self, record: GroundingRecord) -> int:
        vocab, answer = self.answer_vocab, record.answer
        return vocab.get(answer, -1) if (vocab is not None and answer is not None) else -1

    def __getitem__(self, index: int) -> dict[str, Any]:
        loaded = self._load([index])
        return {"image": loaded["image"], "letterbox": loaded["letterbox"], **loaded["expressions"][0]}


class GroupedByImageDataset(GroundingTorchDataset):
    """One item per image: all its records (expressions), in groups of at most ``max_queries_per_image``.

    An item is ``{"image", "letterbox", "expressions": [dict per record], "index": group index}``; each
    expression dict has the keys of a :class:`GroundingTorchDataset` item except ``image`` and
    ``letterbox``, its ``index`` being the record's position in ``records``. Groups follow the first
    appearance of each image in ``records``, records keep their order inside a group.

    Args:
        max_queries_per_image: split an image's records into consecutive groups of at most this many
            (``None``: one group per image).
        (the rest as :class:`GroundingTorchDataset`)
    """

    def __init__(
        self,
        records: Sequence[GroundingRecord],
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        answer_vocab: dict[str, int] | None = None,
        load_masks: bool = False,
        cache_mb: float = 0,
        max_queries_per_image: int | None = None,
    ):
        super().__init__(records, transform, answer_vocab, load_masks, cache_mb)
        if max_queries_per_image is not None and max_queries_per_image < 1:
            raise DataError(
                f"config data.max_queries_per_image={max_queries_per_image}: expected at least 1 (or null)"
            )
        self.max_queries_per_image = max_queries_per_image
        by_image: dict[str, list[int]] = {}
        words = []
        for i in range(len(records)):
            record = _peek(records, i)
            by_image.setdefault(record.image_path, []).append(i)
            words.append(len(record.text.split()))
        step = max_queries_per_image or max((len(v) for v in by_image.values()), default=1)
        self.groups: list[list[int]] = [
            members[k : k + step] for members in by_image.values() for k in range(0, len(members), step)
        ]
        self._lengths = [max(words[i] for i in g) for g in self.groups]

    def __len__(self) -> int:
        return len(self.groups)

    def item_lengths(self) -> list[int]:
        """Per item, the word count of its longest expression (the length curriculum's measure)."""
        return list(self._lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._load(self.groups[index])
        item["index"] = int(index)
        return item


def _peek(records: Sequence[GroundingRecord], i: int) -> GroundingRecord:
    """Record ``i`` for its image path and text only: RecordDatasets skip reading image headers
    (``resolve_size=False``; some layouts store no image sizes), through a ``RecordSubset`` too."""
    base, positions = getattr(records, "base", None), getattr(records, "indices", None)
    if base is not None and positions is not None:
        return _peek(base, positions[i])
    get = getattr(records, "get", None)
    if callable(get):
        try:
            return get(i, resolve_size=False)
        except TypeError:  # a mapping-like ``get`` without the keyword
            pass
    return records[i]
