"""A compact, lazily-decoded view of a COCO ``instances.json`` (refer, gRefCOCO and synth layouts).

RefCOCO's instances.json holds ~200k annotations with polygons; ``json.load`` would turn it into
gigabytes of Python floats. We parse it with an ``object_hook`` that, annotation by annotation, keeps
only what records need (the annotations the refs point at, when known) and stores polygons as float64
arrays, so the peak is the file text plus the compact index.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langground.data.base import Problem
from langground.errors import DataError
from langground.ops import masks as M

_IMAGE = "__image__"


class _Bad(Exception):
    """Raised inside the JSON hook; turned into a DataError naming the file."""


def read_json(path: Path, object_hook: Any = None) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line DataError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a JSON file") from None
    try:
        return json.loads(text, object_hook=object_hook)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except _Bad as e:
        raise DataError(f"{path}: {e}") from None


def compact_segmentation(seg: Any) -> Any:
    """Polygons as a tuple of float64 arrays (a fraction of a list of Python floats); RLE dicts as is."""
    if isinstance(seg, list):
        if seg and not isinstance(seg[0], list):
            seg = [seg]
        return tuple(np.asarray(p, dtype=np.float64) for p in seg)
    return seg


class CocoInstances:
    """Images and annotations of a COCO instances file, by id, in compact columns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images: dict[int, tuple[str | None, int, int]] = {}  # id -> (file_name, height, width)
        self.ann_row: dict[int, int] = {}
        self.ann_ids = np.zeros(0, np.int64)
        self.ann_image = np.zeros(0, np.int64)
        self.ann_bbox = np.zeros((0, 4), np.float64)  # COCO xywh
        self.ann_area = np.zeros(0, np.float64)
        self.ann_category = np.zeros(0, np.int64)
        self.ann_seg: list[Any] = []
        self.categories: dict[int, str] = {}
        self.problems: list[Problem] = []

    @classmethod
    def load(
        cls,
        path: Path,
        keep_ann_ids: Collection[int] | None = None,
        keep_image_ids: Collection[int] | None = None,
    ) -> CocoInstances:
        """Parse ``path``, keeping only the listed annotations/images when given."""
        self = cls(path)
        anns: list[tuple[int, int, Any, float, int, Any]] = []
        seen_anns: set[int] = set()
        seen_images: set[int] = set()

        def hook(d: dict[str, Any]) -> Any:
            if "bbox" in d and "image_id" in d:
                aid = d.get("id")
                if not isinstance(aid, int):
                    raise _Bad(f"annotation with bbox {d.get('bbox')} has no integer 'id'")
                if aid in seen_anns:
                    self.problems.append(Problem("duplicate id", f"ann {aid}", f"{path.name}: annotation id repeats"))
                    return None
                seen_anns.add(aid)
                if keep_ann_ids is not None and aid not in keep_ann_ids:
                    return None
                bbox = d["bbox"]
                if not (isinstance(bbox, list) and len(bbox) == 4):
                    raise _Bad(f"annotation {aid}: bbox {bbox!r} is not [x, y, w, h]")
                seg = compact_segmentation(d["segmentation"]) if d.get("segmentation") else None
                area = float(d["area"]) if d.get("area") is not None else float("nan")
                anns.append((aid, int(d["image_id"]), bbox, area, int(d.get("category_id", -1)), seg))
                return None
            if "file_name" in d or ("height" in d and "width" in d and "id" in d):
                iid = d.get("id")
                if iid is None:
                    raise _Bad(f"image entry {d.get('file_name')!r} has no 'id'")
                if iid in seen_images:
                    self.problems.append(Problem("duplicate id", f"image {iid}", f"{path.name}: image id repeats"))
                    return None
                seen_images.add(iid)
                if keep_image_ids is None or iid in keep_image_ids:
                    h, w = int(d.get("height") or 0), int(d.get("width") or 0)
                    self.images[iid] = (d.get("file_name"), h, w)
                return _IMAGE
            if "supercategory" in d or ("name" in d and "id" in d and len(d) <= 4):
                self.categories[int(d["id"])] = str(d["name"])
                return None
            return d

        top = read_json(path, hook)
        if not isinstance(top, dict):
            raise DataError(f"{path}: top level is a {type(top).__name__}, expected a COCO instances dict")
        for key in ("images", "annotations"):
            if key not in top:
                raise DataError(f"{path}: missing key {key!r} (expected a COCO instances file)")
        n = len(anns)
        self.ann_ids = np.fromiter((a[0] for a in anns), np.int64, n)
        self.ann_image = np.fromiter((a[1] for a in anns), np.int64, n)
        try:
            self.ann_bbox = np.asarray([a[2] for a in anns], np.float64).reshape(n, 4)
        except (TypeError, ValueError):
            bad = next(a[0] for a in anns if not all(isinstance(v, (int, float)) for v in a[2]))
            raise DataError(f"{path}: annotation {bad}: bbox is not 4 numbers (expected [x, y, w, h])") from None
        self.ann_area = np.fromiter((a[3] for a in anns), np.float64, n)
        self.ann_category = np.fromiter((a[4] for a in anns), np.int64, n)
        self.ann_seg = [a[5] for a in anns]
        self.ann_row = {int(a): i for i, a in enumerate(self.ann_ids)}
        return self

    # -- lookups ----------------------------------------------------------------------------------
    def has_ann(self, ann_id: int) -> bool:
        return ann_id in self.ann_row

    def row(self, ann_id: int, who: str = "") -> int:
        try:
            return self.ann_row[ann_id]
        except KeyError:
            where = f"{who} points at " if who else ""
            raise DataError(f"{self.path}: {where}annotation {ann_id}, which is not in this file") from None

    def boxes_xyxy(self, ann_ids: Sequence[int], who: str = "") -> np.ndarray:
        """``(K, 4)`` float32 xyxy boxes of the annotations (COCO xywh + no +1)."""
        if not ann_ids:
            return np.zeros((0, 4), np.float32)
        rows = [self.row(a, who) for a in ann_ids]
        b = self.ann_bbox[rows]
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float32)

    def rle(self, ann_id: int, height: int, width: int) -> M.Rle | None:
        seg = self.ann_seg[self.row(ann_id)]
        if seg is None:
            return None
        try:
            return M.segmentation_to_rle(seg, height, width)
        except (ValueError, TypeError) as e:
            raise DataError(f"{self.path}: annotation {ann_id}: bad segmentation: {e}") from None

    def has_masks(self, ann_ids: Sequence[int]) -> bool:
        return all(self.ann_seg[self.row(a)] is not None for a in ann_ids)

    def union_mask(self, ann_ids: Sequence[int], height: int, width: int) -> np.ndarray:
        """OR of the annotations' masks, ``(H, W)`` uint8 (zeros for no annotations)."""
        rles = []
        for a in ann_ids:
            rle = self.rle(a, height, width)
            if rle is None:
                raise DataError(f"{self.path}: annotation {a} has no segmentation; expected polygons or RLE")
            rles.append(rle)
        return M.union_rle(rles, (height, width))

    def decoded_area(self, ann_id: int, height: int, width: int) -> int:
        rle = self.rle(ann_id, height, width)
        return -1 if rle is None else M.rle_area(rle)
