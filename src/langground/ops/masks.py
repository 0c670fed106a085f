"""Binary masks: COCO RLE / polygons <-> numpy (pycocotools underneath), area, IoU, union.

Conventions: a mask is an ``(H, W)`` uint8 array with values {0, 1} in original-image pixels.
COCO RLE is COLUMN-major (pycocotools); its ``counts`` are kept as ``str`` so they survive JSON.
Several polygons of one object (or several objects of one expression) are merged with OR, never
summed: the refer toolkit's ``np.sum(m, axis=2)`` gives 2 where polygons overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict[str, Any]


def rle_encode(mask: np.ndarray) -> Rle:
    """Encode an ``(H, W)`` binary mask as compressed COCO RLE ``{"size": [H, W], "counts": str}``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"rle_encode expects an (H, W) mask, got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _compressed(rle: Rle) -> Rle:
    """Compressed RLE (counts as bytes) from compressed (str/bytes) or uncompressed (list) RLE."""
    counts = rle["counts"]
    h, w = (int(v) for v in rle["size"])
    if isinstance(counts, list):
        # Uncompressed COCO RLE (``iscrowd`` annotations): column-major run lengths.
        if sum(int(c) for c in counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected H*W = {h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def rle_decode(rle: Rle) -> np.ndarray:
    """Decode compressed or uncompressed COCO RLE to an ``(H, W)`` uint8 mask."""
    return np.ascontiguousarray(mask_utils.decode(_compressed(rle)), dtype=np.uint8)


def rle_area(rle: Rle) -> int:
    """Foreground pixel count of an RLE, without decoding it."""
    return int(mask_utils.area(_compressed(rle)))


def _polygons(polygons: Iterable[Sequence[float]]) -> list[list[float]]:
    out = []
    for poly in polygons:
        p = [float(v) for v in poly]
        if len(p) % 2:
            raise ValueError(f"polygon has an odd number of coordinates ({len(p)}); expected x1,y1,x2,y2,...")
        # Fewer than 3 points cover no pixels, and pycocotools would read a 4-number list as a bbox.
        if len(p) >= 6:
            out.append(p)
    return out


def polygons_to_rle(polygons: Iterable[Sequence[float]], height: int, width: int) -> Rle:
    """Rasterise COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` into ONE compressed RLE (OR of all)."""
    polys = _polygons(polygons)
    if not polys:
        return mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
    rles = mask_utils.frPyObjects(polys, height, width)
    return mask_utils.merge(rles, intersect=False)


def polygons_to_mask(polygons: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons -> ``(H, W)`` uint8 mask; several polygons are merged with OR."""
    return rle_decode(polygons_to_rle(polygons, height, width))


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> Rle:
    """Any COCO ``segmentation`` (polygon list, compressed RLE, uncompressed RLE) -> compressed RLE.

    Like ``COCO.annToRLE``, but polygons are OR-merged explicitly and an RLE whose ``size`` disagrees
    with the image is rejected instead of silently decoded at the wrong shape.
    """
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError("RLE segmentation needs 'size' and 'counts'")
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} does not match the image size [{height}, {width}]")
        return _compressed(segmentation)
    if isinstance(segmentation, (list, tuple)):
        if segmentation and not isinstance(segmentation[0], (list, tuple, np.ndarray)):
            segmentation = [segmentation]  # a single flat polygon
        return polygons_to_rle(segmentation, height, width)
    raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """``annToMask`` for polygon / RLE / uncompressed-RLE segmentations: ``(H, W)`` uint8."""
    return rle_decode(segmentation_to_rle(segmentation, height, width))


def segmentation_area(segmentation: Any, height: int, width: int) -> int:
    """Pixel area of a COCO segmentation, computed on its RLE (no full decode)."""
    return int(mask_utils.area(segmentation_to_rle(segmentation, height, width)))


def row_major_runs_to_mask(runs: str | Sequence[int], height: int, width: int) -> np.ndarray:
    """Decode ROW-major alternating run lengths that start with zeros (CLEVR-Ref+ ``obj_mask``).

    ``"3,2,5"`` over a 2x5 image is 3 zeros, 2 ones, 5 zeros in reading order.
    """
    counts = [int(c) for c in runs.split(",")] if isinstance(runs, str) else [int(c) for c in runs]
    if any(c < 0 for c in counts):
        raise ValueError("run lengths must be non-negative")
    total = sum(counts)
    if total != height * width:
        raise ValueError(f"run lengths sum to {total}, expected {height}x{width} = {height * width}")
    values = np.arange(len(counts), dtype=np.int64) % 2  # 0, 1, 0, 1, ... starting with zeros
    return np.repeat(values.astype(np.uint8), counts).reshape(height, width)


def mask_area(mask: np.ndarray | Rle) -> int:
    """Foreground pixel count of an ``(H, W)`` mask or of an RLE dict."""
    if isinstance(mask, dict):
        return rle_area(mask)
    return int(np.count_nonzero(mask))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """IoU of binary masks ``(..., H, W)``, element-wise over leading dims.

    Two empty masks are identical: IoU 1.0 (the metrics module decides how no-target is scored).
    """
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: shapes differ {a.shape} vs {b.shape}")
    inter = np.logical_and(a, b).sum(axis=(-2, -1), dtype=np.int64)
    union = np.logical_or(a, b).sum(axis=(-2, -1), dtype=np.int64)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(iou) if iou.ndim == 0 else iou


def union_masks(masks: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """OR of several ``(H, W)`` masks; all zeros of ``shape`` when there are none."""
    out = np.zeros(shape, np.uint8)
    for m in masks:
        m = np.asarray(m)
        if m.shape != tuple(shape):
            raise ValueError(f"union_masks: mask of shape {m.shape} in a union of shape {tuple(shape)}")
        np.logical_or(out, m, out=out, casting="unsafe")
    return out


def union_rle(rles: Sequence[Rle], shape: tuple[int, int]) -> np.ndarray:
    """Decode the OR of several compressed RLEs of the same image to an ``(H, W)`` uint8 mask."""
    if not rles:
        return np.zeros(shape, np.uint8)
    merged = mask_utils.merge([_compressed(r) for r in rles], intersect=False)
    return rle_decode(merged)
