"""``langground data check``: validate a dataset before a long run, collecting every problem.

Checks: records that fail to build, missing / undecodable images, image sizes that disagree with the
annotations, boxes outside the image or empty, empty sentences, masks whose area disagrees with the
stored annotation area (or masks that fail to decode / have the wrong shape), duplicate ids and
references to annotations that do not exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from langground.data.base import Problem, RecordDataset
from langground.data.images import image_size, verify_image
from langground.errors import DataError

KINDS = (
    "unreadable file",
    "malformed entry",
    "unreadable record",
    "missing image",
    "unreadable image",
    "image size",
    "box outside image",
    "empty box",
    "empty sentence",
    "mask area",
    "mask",
    "duplicate id",
    "dangling reference",
)


@dataclass
class CheckReport:
    dataset: str
    split: str
    task: str
    records: int = 0
    images: int = 0
    masks: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    offenders: dict[str, list[Problem]] = field(default_factory=dict)
    max_offenders: int = 5

    @property
    def ok(self) -> bool:
        return not self.counts

    def add(self, p: Problem) -> None:
        self.counts[p.kind] += 1
        first = self.offenders.setdefault(p.kind, [])
        if len(first) < self.max_offenders:
            first.append(p)

    def to_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "task": self.task,
            "records": self.records,
            "images": self.images,
            "masks_checked": self.masks,
            "ok": self.ok,
            "problems": {k: self.counts[k] for k in KINDS if self.counts[k]},
            "first_offenders": {k: [f"{p.item}: {p.message}" for p in v] for k, v in self.offenders.items()},
        }


def check_dataset(
    ds: RecordDataset,
    *,
    decode_images: bool = True,
    check_masks: bool = True,
    area_tol: float = 0.02,
    box_tol: float = 1.0,
    max_offenders: int = 5,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Run every check over ``ds``; never stops at the first problem.

    ``area_tol``: relative tolerance between a decoded mask's area and the stored ``area`` (COCO
    areas of polygons are the polygon's geometric area; rasterisation differs by up to ~1% on thin
    shapes). ``box_tol``: pixels a box may stick out of the image.
    """
    rep = CheckReport(ds.name, ds.split, ds.task, max_offenders=max_offenders)
    for p in ds.index_problems:
        rep.add(p)
    seen_ids: set[tuple[str, str]] = set()
    image_status: dict[str, tuple[str | None, tuple[int, int] | None]] = {}
    mask_keys: set[tuple[object, ...]] = set()
    has_areas = False
    if check_masks:
        for item, area, decode in ds.annotation_areas():
            has_areas = True
            rep.masks += 1
            try:
                got = decode()
            except DataError as e:
                rep.add(Problem("mask", item, str(e)))
                continue
            if np.isfinite(area) and abs(got - area) > max(area_tol * area, 4.0):
                rep.add(
                    Problem("mask area", item, f"decoded mask has {got} px, annotation area is {area:.1f}")
                )
    for i in range(len(ds)):
        if progress is not None:
            progress(i)
        try:
            rec = ds.get(i, resolve_size=False)
        except DataError as e:
            rep.add(Problem("unreadable record", f"#{i}", str(e)))
            continue
        rep.records += 1
        # With all splits, ids are named with their split (unless the layout's ids already are).
        prefixed = ds.split != "all" or rec.sample_id.startswith(f"{rec.split}/")
        rid = rec.sample_id if prefixed else f"{rec.split}/{rec.sample_id}"
        key = (rec.split, rec.sample_id)
        if key in seen_ids:
            rep.add(Problem("duplicate id", f"sample {rid}", "sample id repeats"))
        seen_ids.add(key)
        if not rec.text or not rec.text.strip():
            rep.add(Problem("empty sentence", f"sample {rid}", "expression/question text is empty"))
        # Images: once per file.
        if rec.image_path not in image_status:
            image_status[rec.image_path] = _image(rec.image_path, rec.image_size, decode_images)
            err, _ = image_status[rec.image_path]
            if err is not None:
                kind = (
                    "missing image"
                    if err == "image not found"
                    else "image size"
                    if err.startswith("image is")
                    else "unreadable image"
                )
                rep.add(Problem(kind, f"image {rec.image_id}", f"{rec.image_path}: {err}"))
        err, real = image_status[rec.image_path]
        h, w = rec.image_size if rec.image_size != (0, 0) else (real or (0, 0))
        for b in np.asarray(rec.boxes, np.float64).reshape(-1, 4):
            x0, y0, x1, y1 = b.tolist()
            if not np.all(np.isfinite(b)) or x1 <= x0 or y1 <= y0:
                rep.add(Problem("empty box", f"sample {rid}", f"box {_fmt(b)} has no area"))
            elif h and w and (x0 < -box_tol or y0 < -box_tol or x1 > w + box_tol or y1 > h + box_tol):
                rep.add(
                    Problem("box outside image", f"sample {rid}", f"box {_fmt(b)} outside the {w}x{h} image")
                )
        # Masks of layouts without stored areas (npy / run-length / .mat): decode each distinct one.
        if check_masks and not has_areas and rec.mask_loader is not None and not rec.no_target:
            mkey = (rec.image_path, rec.ann_ids, rec.meta.get("mask_id"), rec.meta.get("mask_file"))
            if mkey not in mask_keys:
                mask_keys.add(mkey)
                rep.masks += 1
                try:
                    m = rec.load_mask()
                except DataError as e:
                    rep.add(Problem("mask", f"sample {rid}", str(e)))
                else:
                    if m is not None and not np.any(m):
                        rep.add(
                            Problem(
                                "mask area", f"sample {rid}", "mask is empty but the expression has a target"
                            )
                        )
    rep.images = len(image_status)
    return rep


def _image(path: str, size: tuple[int, int], decode: bool) -> tuple[str | None, tuple[int, int] | None]:
    if not Path(path).is_file():
        return "image not found", None
    if decode:
        err = verify_image(path, size)
        if err is not None and not err.startswith("image is"):
            return err, None
    else:
        err = None
    try:
        real = image_size(path)
    except DataError as e:
        return str(e).split(": ", 1)[-1], None
    if err is None and size != (0, 0) and tuple(size) != real:
        err = f"image is {real[0]}x{real[1]} (HxW) but the annotations say {size[0]}x{size[1]}"
    return err, real


def _fmt(b: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in b.tolist()) + "]"
