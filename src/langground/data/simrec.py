"""SimREC / LaConvNet merged layout: ``<root>/anns/<ds>.json`` + ``<root>/masks/<ds>/<mask_id>.npy``.

``anns/<ds>.json`` is ``{split: [{"iid", "bbox" (xywh), "cat_id", "refs": [sentence, ...], "mask_id"}]}``
(what the LaConvNet code reads); every sentence of every entry is one record. Images as that code finds
them: COCO ``images/train2014/COCO_train2014_%012d.jpg`` (refcoco, refcoco+, refcocog), ReferIt
``images/refclef/%d.jpg``, otherwise the entry's ``url``. Masks are ``(H, W)`` (or ``(H, W, 1)``) arrays.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from langground.data.base import (
    ALL_SPLITS,
    Collector,
    DatasetProtocol,
    Problem,
    RecordDataset,
    check_split,
    register_dataset,
)
from langground.data.coco import read_json
from langground.data.images import image_size
from langground.data.protocols import FLICKR_MERGED, REFCOCO, REFCOCO_PLUS, REFCOCOG_UMD, REFERIT
from langground.errors import DataError
from langground.types import GroundingRecord

_DATASETS = {
    # ds: (image folders under <root>/images, file pattern from iid, protocol)
    "refcoco": (("train2014", "mscoco/images/train2014"), "COCO_train2014_{:012d}.jpg", REFCOCO),
    "refcoco+": (("train2014", "mscoco/images/train2014"), "COCO_train2014_{:012d}.jpg", REFCOCO_PLUS),
    "refcocog": (("train2014", "mscoco/images/train2014"), "COCO_train2014_{:012d}.jpg", REFCOCOG_UMD),
    "referit": (("refclef", "referit", "saiapr_tc-12"), "{}.jpg", REFERIT),
    "flickr": (("flickr", "flickr30k", "flickr30k_images"), "{}.jpg", FLICKR_MERGED),
}


class SimRECDataset(RecordDataset):
    layout = "simrec"

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        split: str,
        ds: str,
        path: Path,
        rows: dict[str, list[Any]],
        boxes: np.ndarray,
        image_dir: Path,
        candidates: list[Path],
        mask_dir: Path | None,
        problems: list[Problem],
        protocol: DatasetProtocol,
    ) -> None:
        super().__init__(
            root=root,
            name=name,
            split=split,
            protocol=protocol,
            image_dirs=candidates,
            task="rec",
            files=[path],
        )
        self.ds = ds
        self.rows = rows
        self.boxes = boxes
        self.image_dir = image_dir
        self.mask_dir = mask_dir
        self.split_names = sorted(set(rows["split"]))
        self.index_problems.extend(problems)

    def __len__(self) -> int:
        return len(self.rows["text"])

    def _mask_path(self, i: int) -> Path | None:
        mid = self.rows["mask_id"][i]
        return None if self.mask_dir is None or mid is None else self.mask_dir / f"{mid}.npy"

    def _size(self, i: int, path: Path, sid: str, resolve: bool) -> tuple[int, int]:
        if not resolve:
            return (0, 0)
        if path.is_file() or self._mask_path(i) is None:
            return image_size(path, sid)
        # No image here (annotations only): the mask's .npy header knows the size without loading it.
        arr = self._load_npy(self._mask_path(i), sid, mmap=True)  # type: ignore[arg-type]
        return int(arr.shape[0]), int(arr.shape[1])

    @staticmethod
    def _load_npy(path: Path, sid: str, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path}: mask file not found (record {sid})") from None
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a .npy mask (record {sid}): {e}") from None

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        r = self.rows
        sid = r["id"][i]
        path = self.image_dir / r["file"][i]
        mpath = self._mask_path(i)
        loader = None if mpath is None else functools.partial(self._mask, i, mpath, path, sid)
        meta: dict[str, Any] = {"mask_id": r["mask_id"][i]}
        if r["cat"][i] is not None:
            meta["category_ids"] = (r["cat"][i],)
        return GroundingRecord(
            sample_id=sid,
            image_id=r["iid"][i],
            image_path=str(path),
            image_size=self._size(i, path, sid, resolve_size),
            text=r["text"][i],
            boxes=self.boxes[r["entry"][i]][None].copy(),
            dataset=self.name,
            split=r["split"][i],
            raw_text=r["text"][i],
            mask_loader=loader,
            meta=meta,
        )

    def _mask(self, i: int, mpath: Path, path: Path, sid: str) -> np.ndarray:
        m = self._load_npy(mpath, sid)
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[:, :, 0]
        h, w = image_size(path, sid) if path.is_file() else m.shape[:2]
        if m.shape != (h, w):
            raise DataError(
                f"{mpath}: mask of shape {m.shape} for record {sid}, expected ({h}, {w}) "
                "(the image's H x W, optionally x 1)"
            )
        return (m != 0).astype(np.uint8)


def open_simrec(
    root: Path,
    split: str,
    *,
    name: str,
    ds: str,
    image_dir: str | Path | None = None,
    protocol: DatasetProtocol | None = None,
    strict: bool = True,
) -> SimRECDataset:
    path = root / "anns" / f"{ds}.json"
    top = read_json(path)
    if not isinstance(top, dict):
        raise DataError(f"{path}: top level is a {type(top).__name__}, expected {{split: [entries]}}")
    check_split(split, sorted(top), path)
    splits = sorted(top) if split == ALL_SPLITS else [split]
    folders, pattern, _ = _DATASETS[ds]
    rows: dict[str, list[Any]] = {
        k: [] for k in ("id", "split", "entry", "iid", "file", "text", "mask_id", "cat")
    }
    boxes: list[list[float]] = []
    problems: list[Problem] = []
    bad = Collector(strict, problems)
    for s in splits:
        entries = top[s]
        if not isinstance(entries, list):
            raise DataError(f"{path}: split {s!r} is a {type(entries).__name__}, expected a list of entries")
        for j, e in enumerate(entries):
            try:
                _check_entry(e, f"{path}: {s} entry {j}")
            except DataError as err:
                bad(f"{s}/{j}", err)
                continue
            b = e["bbox"]
            entry = len(boxes)
            boxes.append([b[0], b[1], b[0] + b[2], b[1] + b[3]])
            iid = e["iid"]
            if e.get("url"):
                fname = str(e["url"])
            else:
                try:
                    fname = pattern.format(int(str(iid).split(".")[0]))
                except ValueError:
                    fname = str(iid)
            refs = e["refs"] if isinstance(e["refs"], list) else [e["refs"]]
            if not refs:
                problems.append(Problem("empty sentence", f"{s}/{j}", "entry has no refs"))
            for k, text in enumerate(refs):
                rows["id"].append(f"{s}/{j}/{k}")
                rows["split"].append(s)
                rows["entry"].append(entry)
                rows["iid"].append(iid)
                rows["file"].append(sys.intern(fname))
                rows["text"].append(str(text))
                rows["mask_id"].append(e.get("mask_id"))
                rows["cat"].append(e.get("cat_id"))
    candidates = [root / "images" / f for f in folders] + [root / "images"]
    chosen = Path(image_dir) if image_dir else next((d for d in candidates if d.is_dir()), candidates[0])
    mask_dir = root / "masks" / ds
    return SimRECDataset(
        root=root,
        name=name,
        split=split,
        ds=ds,
        path=path,
        rows=rows,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        image_dir=chosen,
        candidates=candidates,
        mask_dir=mask_dir if mask_dir.is_dir() else None,
        problems=problems,
        protocol=protocol or _DATASETS[ds][2],
    )


def _check_entry(e: Any, where: str) -> None:
    """One-line DataError naming the entry when it is not ``{iid, bbox xywh, refs, [mask_id, cat_id]}``."""
    if not isinstance(e, dict):
        raise DataError(f"{where} is a {type(e).__name__}, expected a dict with iid/bbox/refs")
    for key in ("iid", "bbox", "refs"):
        if key not in e:
            raise DataError(
                f"{where} (mask_id {e.get('mask_id')}): missing key {key!r} (expected iid/bbox/refs)"
            )
    b = e["bbox"]
    if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
        raise DataError(f"{where} (mask_id {e.get('mask_id')}): bbox {b!r} is not [x, y, w, h] numbers")


for _ds in _DATASETS:
    register_dataset(
        f"simrec-{_ds}",
        layout="simrec",
        opener=open_simrec,
        detect=lambda root, _ds=_ds: (root / "anns" / f"{_ds}.json").is_file(),
        description=f"SimREC/LaConvNet merged anns/{_ds}.json with masks/{_ds}/<mask_id>.npy",
        protocol=_DATASETS[_ds][2],
        ds=_ds,
    )
