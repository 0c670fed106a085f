"""A compact, lazily-decoded view of a COCO ``instances.json`` (refer, gRefCOCO and synth layouts).

RefCOCO's instances.json holds ~200k annotations with ~10M polygon coordinates; ``json.load`` would
turn them into Python floats (gigabytes, and most of the parse time), though the refs point at a
quarter of the annotations. So the polygon lists are cut out of the file's bytes before parsing
(:func:`cut_polygons`, a chunked C-speed scan, so the file is never in memory whole), the rest is
parsed with an ``object_hook`` that keeps only what records need, and a kept annotation's polygons are
read back from the file and parsed when its mask is decoded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from langground.data.base import Collector, Problem
from langground.errors import DataError
from langground.ops import masks as M

_IMAGE = "__image__"


class _Bad(Exception):
    """Raised inside the JSON hook; turned into a DataError naming the file."""


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSON file") from None


def parse_json(path: Path, data: bytes | str, object_hook: Any = None) -> Any:
    """``json.loads`` with one-line DataErrors naming ``path``."""
    try:
        return json.loads(data, object_hook=object_hook)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a JSON file"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except _Bad as e:
        raise DataError(f"{path}: {e}") from None


def read_json(path: Path, object_hook: Any = None) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line DataError."""
    return parse_json(path, read_bytes(path), object_hook)


_SEG_KEY = re.compile(rb'"segmentation": ?\[\[')
_LAST_ID = re.compile(rb'[{,]\s*"id": ?(-?\d+)\s*$')
_CHUNK = 1 << 20


def cut_polygons(
    path: Path, keep_ann_ids: Collection[int] | None = None
) -> tuple[bytearray, np.ndarray, np.ndarray]:
    """Read ``path`` in chunks, replacing each ``"segmentation": [[...]]`` polygon list by its index k.

    Returns ``(shortened JSON, spans, dropped ids)``. ``spans`` are the ``(n, 2)`` byte offsets of the
    cut lists in the file, read again only when a mask is decoded. With ``keep_ann_ids``, an annotation
    written the way COCO writes them (``{"segmentation": [[...]], ..., "id": N}``) whose id is not kept
    becomes ``null`` altogether and N goes to ``dropped ids``. Only compact lists (``[[`` ... ``]]``,
    nothing but numbers between) are cut; RLE dicts, empty or pretty-printed segmentations stay and are
    parsed as usual. The whole file is never in memory at once.
    """
    out = bytearray()
    spans: list[int] = []
    dropped: list[int] = []
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSON file") from None
    with f:
        buf, base, pos, eof = f.read(_CHUNK), 0, 0, False  # base: file offset of buf[0]
        while True:
            m = _SEG_KEY.search(buf, pos)
            e = -1 if m is None else buf.find(b"]]", m.end() - 2)
            first_key = m is not None and buf[m.start() - 1 : m.start()] == b"{"
            close = buf.find(b"}", e) if (e >= 0 and first_key and keep_ann_ids is not None) else 0
            if m is None or e < 0 or close < 0:
                if eof:
                    out += memoryview(buf)[pos:]
                    break
                # Keep what may be the start of a key or of an unfinished annotation, read on.
                keep = pos if m is not None else max(pos, len(buf) - 24)
                out += memoryview(buf)[pos:keep]
                more = f.read(_CHUNK)
                eof = not more
                buf, base, pos = buf[keep:] + more, base + keep, 0
                continue
            s, e = m.end() - 2, e + 2
            # A quote or brace inside means this was no plain list of number lists: leave it to json.
            if (
                buf.find(b'"', s, e) >= 0
                or buf.find(b"{", s, e) >= 0
                or buf[m.start() - 1 : m.start()] == b"\\"
            ):
                out += memoryview(buf)[pos:e]
                pos = e
                continue
            if close > 0 and buf.find(b"{", e, close) < 0:
                last = _LAST_ID.search(buf, e, close)
                if last is not None and int(last.group(1)) not in keep_ann_ids:  # type: ignore[operator]
                    out += memoryview(buf)[pos : m.start() - 1]
                    out += b"null"
                    dropped.append(int(last.group(1)))
                    pos = close + 1
                    continue
            out += memoryview(buf)[pos:s]
            out += str(len(spans) // 2).encode()
            spans += (base + s, base + e)
            pos = e
    return out, np.asarray(spans, np.int64).reshape(-1, 2), np.asarray(dropped, np.int64)


class PolygonSpan(NamedTuple):
    """Where an annotation's polygon list sits in its instances file (decoded with the mask)."""

    start: int
    end: int


def compact_segmentation(seg: Any) -> Any:
    """Polygons as a tuple of float64 arrays (a fraction of a list of Python floats); RLE dicts as is."""
    if isinstance(seg, list):
        if seg and not isinstance(seg[0], list):
            seg = [seg]
        return tuple(np.asarray(p, dtype=np.float64) for p in seg)
    return seg


def read_polygons(path: Path, span: PolygonSpan, stamp: tuple[int, int], where: str) -> Any:
    """Read and parse a polygon list that :func:`cut_polygons` left in the file."""
    try:
        st = path.stat()
        if (st.st_size, st.st_mtime_ns) != stamp:
            raise DataError(f"{path}: changed since the dataset was opened ({where}); open it again")
        with path.open("rb") as f:
            f.seek(span.start)
            text = f.read(span.end - span.start)
    except OSError as e:
        raise DataError(f"{path}: cannot read the polygons of {where}: {e}") from None
    try:
        return compact_segmentation(json.loads(text))
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: {where}: segmentation is not a list of polygons ({e})") from None


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
        self._stamp = (0, 0)  # (size, mtime) of the file, to notice it changing under lazy polygons

    @classmethod
    def load(
        cls,
        path: Path,
        keep_ann_ids: Collection[int] | None = None,
        keep_image_ids: Collection[int] | None = None,
        bad: Collector | None = None,
    ) -> CocoInstances:
        """Parse ``path``, keeping only the listed annotations/images when given.

        A malformed annotation raises (``bad`` None or strict) or is dropped and reported to ``bad``.
        """
        self = cls(path)

        def malformed(item: str, message: str) -> None:
            error = DataError(f"{path}: {message}")
            if bad is None:
                raise error
            bad(item, error)

        anns: list[tuple[int, int, Any, float, int, Any]] = []
        seen_anns: set[int] = set()
        seen_images: set[int] = set()

        def hook(d: dict[str, Any]) -> Any:
            if "bbox" in d and "image_id" in d:
                aid = d.get("id")
                if not isinstance(aid, int):
                    malformed(f"ann {aid}", f"annotation with bbox {d.get('bbox')} has no integer 'id'")
                    return None
                if aid in seen_anns:
                    self.problems.append(
                        Problem("duplicate id", f"ann {aid}", f"{path.name}: annotation id repeats")
                    )
                    return None
                seen_anns.add(aid)
                if keep_ann_ids is not None and aid not in keep_ann_ids:
                    return None
                bbox = d["bbox"]
                if not (
                    isinstance(bbox, list)
                    and len(bbox) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
                ):
                    malformed(f"ann {aid}", f"annotation {aid}: bbox {bbox!r} is not [x, y, w, h] numbers")
                    return None
                try:
                    image_id, category = int(d["image_id"]), int(d.get("category_id", -1))
                except (TypeError, ValueError):
                    malformed(f"ann {aid}", f"annotation {aid}: image_id/category_id are not integers")
                    return None
                seg = seg_of(d)
                area = float(d["area"]) if isinstance(d.get("area"), (int, float)) else float("nan")
                anns.append((aid, image_id, bbox, area, category, seg))
                return None
            if "file_name" in d or ("height" in d and "width" in d and "id" in d):
                iid = d.get("id")
                if iid is None:
                    raise _Bad(f"image entry {d.get('file_name')!r} has no 'id'")
                if iid in seen_images:
                    self.problems.append(
                        Problem("duplicate id", f"image {iid}", f"{path.name}: image id repeats")
                    )
                    return None
                seen_images.add(iid)
                if keep_image_ids is None or iid in keep_image_ids:
                    h, w = int(d.get("height") or 0), int(d.get("width") or 0)
                    self.images[iid] = (d.get("file_name"), h, w)
                return _IMAGE
            # COCO categories; "licenses" entries ({url, id, name}) look alike but carry a url.
            if "supercategory" in d or ("name" in d and "id" in d and "url" not in d and len(d) <= 4):
                self.categories[int(d["id"])] = str(d["name"])
                return None
            return d

        st = path.stat() if path.is_file() else None
        self._stamp = (st.st_size, st.st_mtime_ns) if st else (0, 0)
        small, spans, dropped = cut_polygons(path, keep_ann_ids)

        def seg_of(d: dict[str, Any]) -> Any:
            seg = d.get("segmentation")
            if isinstance(seg, int) and not isinstance(seg, bool) and 0 <= seg < len(spans):
                return PolygonSpan(int(spans[seg, 0]), int(spans[seg, 1]))  # read with the mask
            return compact_segmentation(seg) if seg else None

        try:
            # Decoded here so that the bytes are freed before parsing (json.loads would keep both).
            text = small.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason}); expected a JSON file") from None
        del small
        try:
            top = parse_json(path, text, hook)
        except DataError as e:
            if "invalid JSON" not in str(e) or not len(spans):
                raise
            del text
            read_json(path)  # the error's line and column in the file as it is on disk
            raise
        if not isinstance(top, dict):
            raise DataError(f"{path}: top level is a {type(top).__name__}, expected a COCO instances dict")
        uniq, counts = np.unique(dropped, return_counts=True)  # ids the hook never saw
        for dup in uniq[counts > 1][:50].tolist():
            self.problems.append(Problem("duplicate id", f"ann {dup}", f"{path.name}: annotation id repeats"))
        for key in ("images", "annotations"):
            if not isinstance(top.get(key), list):
                raise DataError(f"{path}: missing key {key!r} (expected a COCO instances file)")
        # Annotations the hook did not recognise lack 'bbox' or 'image_id'; report the ones refs need.
        for d in top["annotations"]:
            if d is None or (
                keep_ann_ids is not None and (not isinstance(d, dict) or d.get("id") not in keep_ann_ids)
            ):
                continue
            aid = d.get("id") if isinstance(d, dict) else None
            missing = [k for k in ("id", "image_id", "bbox") if not isinstance(d, dict) or k not in d]
            malformed(
                f"ann {aid}", f"annotation {aid}: missing key {missing[0]!r} (expected id/image_id/bbox)"
            )
        n = len(anns)
        self.ann_ids = np.fromiter((a[0] for a in anns), np.int64, n)
        self.ann_image = np.fromiter((a[1] for a in anns), np.int64, n)
        self.ann_bbox = np.asarray([a[2] for a in anns], np.float64).reshape(n, 4)
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
        if isinstance(seg, PolygonSpan):
            seg = read_polygons(self.path, seg, self._stamp, f"annotation {ann_id}")
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
