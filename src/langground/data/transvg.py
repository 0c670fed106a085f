"""TransVG / ReSC index files: ``<root>/data/<name>/<name>_<split>.pth`` + images under ``<root>/ln_data``.

Each file is a torch-saved list of tuples, as TransVG's ``data_loader.py`` reads them:
- ``flickr``: ``(image_file, bbox_xyxy, phrase)``, images ``ln_data/Flickr30k/flickr30k_images/``;
- ``referit``: ``(image_file, mask_file, bbox_xyxy, phrase, attributes)``, images
  ``ln_data/referit/images/``, masks ``ln_data/referit/mask/`` (``segimg_t == 0`` in a .mat);
- ``unc``/``unc+``/``gref``/``gref_umd``: ``(image_file, ann_id, bbox_xywh, sentence, attributes)``,
  images ``ln_data/other/images/mscoco/images/train2014/``.
The files store no ids and no image sizes: a record's id is its position, its size comes from the
image header (read on demand). TransVG casts boxes to int before evaluating; we keep them as stored.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from langground.data.base import (
    ALL_SPLITS,
    Collector,
    DatasetProtocol,
    RecordDataset,
    check_split,
    register_dataset,
)
from langground.data.images import image_size
from langground.data.protocols import (
    FLICKR_MERGED,
    REFCOCO,
    REFCOCO_PLUS,
    REFCOCOG_GOOGLE,
    REFCOCOG_UMD,
    REFERIT,
    TRANSVG_NOTE,
    with_note,
)
from langground.errors import DataError
from langground.types import GroundingRecord

_INFO: dict[str, tuple[str, bool, DatasetProtocol]] = {
    # name: (image dir under ln_data, bbox is xywh, protocol)
    "unc": ("other/images/mscoco/images/train2014", True, with_note(REFCOCO, TRANSVG_NOTE)),
    "unc+": ("other/images/mscoco/images/train2014", True, with_note(REFCOCO_PLUS, TRANSVG_NOTE)),
    "gref": ("other/images/mscoco/images/train2014", True, with_note(REFCOCOG_GOOGLE, TRANSVG_NOTE)),
    "gref_umd": ("other/images/mscoco/images/train2014", True, with_note(REFCOCOG_UMD, TRANSVG_NOTE)),
    "referit": ("referit/images", False, with_note(REFERIT, TRANSVG_NOTE)),
    "flickr": ("Flickr30k/flickr30k_images", False, with_note(FLICKR_MERGED, TRANSVG_NOTE)),
}


def _safe_globals() -> list[Any]:
    # Index files made with numpy boxes need these to load with weights_only=True (no arbitrary code).
    core = getattr(np, "_core", None) or np.core
    out: list[Any] = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    out += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return out


def torch_load_list(path: Path) -> list[Any]:
    """``torch.load`` a list-of-tuples index safely (weights_only + numpy types)."""
    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a torch-saved list of tuples ({first})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: holds a {type(data).__name__}, expected a list of tuples (TransVG index)")
    return data


class TransVGDataset(RecordDataset):
    layout = "transvg"

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        split: str,
        index_name: str,
        files: list[Path],
        rows: dict[str, list[Any]],
        boxes: np.ndarray,
        image_dir: Path,
        mask_dir: Path | None,
        protocol: DatasetProtocol,
    ) -> None:
        super().__init__(
            root=root,
            name=name,
            split=split,
            protocol=protocol,
            image_dirs=[image_dir],
            task="rec",
            files=files,
        )
        self.index_name = index_name
        self.rows = rows
        self.boxes = boxes
        self.image_dir = image_dir
        self.mask_dir = mask_dir
        self.split_names = sorted(set(rows["split"]))

    def __len__(self) -> int:
        return len(self.rows["image"])

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        r = self.rows
        sid = r["id"][i]
        path = self.image_dir / r["image"][i]
        size = image_size(path, f"entry {sid}") if resolve_size else (0, 0)
        second = r["second"][i]
        meta: dict[str, Any] = {}
        if r["attr"][i]:
            meta["attributes"] = r["attr"][i]
        ann_ids: tuple[int, ...] = ()
        loader = None
        if self.index_name == "referit":
            meta["mask_file"] = second
            if self.mask_dir is not None and second:
                loader = functools.partial(self._mask, self.mask_dir / str(second), str(path), sid)
        elif second is not None and self.index_name != "flickr":
            try:
                ann_ids = (int(second),)
            except (TypeError, ValueError):
                meta["ann"] = second
        return GroundingRecord(
            sample_id=sid,
            image_id=Path(r["image"][i]).stem,
            image_path=str(path),
            image_size=size,
            text=r["text"][i],
            boxes=self.boxes[i : i + 1].copy(),
            dataset=self.name,
            split=r["split"][i],
            raw_text=r["text"][i],
            ann_ids=ann_ids,
            mask_loader=loader,
            meta=meta,
        )

    def _mask(self, mask_path: Path, image_path: str, sid: str) -> np.ndarray:
        h, w = image_size(image_path, f"entry {sid}")
        if not mask_path.is_file():
            raise DataError(f"{mask_path}: mask file not found (entry {sid})")
        if mask_path.suffix == ".mat":
            try:
                from scipy.io import loadmat
            except ImportError:
                raise DataError(
                    f"{mask_path}: reading ReferIt .mat masks needs scipy (pip install scipy)"
                ) from None
            m = loadmat(str(mask_path)).get("segimg_t")
            if m is None:
                raise DataError(f"{mask_path}: no 'segimg_t' array (entry {sid}); expected a ReferIt mask")
            mask = np.asarray(m) == 0  # ReferIt: the object is where segimg_t == 0
        elif mask_path.suffix == ".npy":
            mask = np.load(mask_path) != 0
        else:
            import torch

            mask = np.asarray(torch.load(mask_path, map_location="cpu", weights_only=True)) != 0
        mask = mask.squeeze()
        if mask.shape != (h, w):
            raise DataError(
                f"{mask_path}: mask is {mask.shape}, expected ({h}, {w}) of the image (entry {sid})"
            )
        return mask.astype(np.uint8)


def _entry(e: Any, index_name: str, path: Path, i: int) -> tuple[str, Any, Any, str, Any]:
    want = 3 if index_name == "flickr" else 5
    if not isinstance(e, (tuple, list)) or len(e) < want - (0 if index_name == "flickr" else 1):
        shape = (
            "(img, bbox_xyxy, phrase)" if index_name == "flickr" else "(img, ann/mask, bbox, phrase, attr)"
        )
        raise DataError(
            f"{path}: entry {i} is {type(e).__name__} of length {len(e) if hasattr(e, '__len__') else '?'}, "
            f"expected a tuple {shape}"
        )
    if index_name == "flickr":
        return str(e[0]), None, e[1], str(e[2]), None
    return str(e[0]), e[1], e[2], str(e[3]), (e[4] if len(e) > 4 else None)


def open_transvg(
    root: Path,
    split: str,
    *,
    name: str,
    index_name: str,
    image_dir: str | Path | None = None,
    protocol: DatasetProtocol | None = None,
    strict: bool = True,
) -> TransVGDataset:
    data_dir = root / "data" / index_name
    if not data_dir.is_dir() and (root / index_name).is_dir():
        data_dir, root = root / index_name, root.parent  # root given as the `data` folder itself
    prefix = f"{index_name}_"
    available = sorted(p.name[len(prefix) : -len(".pth")] for p in data_dir.glob(f"{prefix}*.pth"))
    if not available:
        raise DataError(
            f"{data_dir}: no {index_name}_<split>.pth files (expected TransVG's data/{index_name}/)"
        )
    check_split(split, available, data_dir)
    splits = available if split == ALL_SPLITS else [split]
    sub, xywh, _ = _INFO[index_name]
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "split", "image", "second", "text", "attr")}
    boxes: list[Any] = []
    files = []
    bad = Collector(strict)
    for s in splits:
        path = data_dir / f"{index_name}_{s}.pth"
        for i, e in enumerate(torch_load_list(path)):
            try:
                img, second, box, text, attr = _entry(e, index_name, path, i)
                try:
                    b = [float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)]
                except (TypeError, ValueError):
                    b = []
                if len(b) != 4:
                    order = "x1, y1, x2, y2" if not xywh else "x, y, w, h"
                    raise DataError(f"{path}: entry {i}: bbox {box!r} is not 4 numbers (expected [{order}])")
            except DataError as err:
                bad(f"{s}/{i}", err)
                continue
            if xywh:
                b = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
            rows["id"].append(f"{s}/{i}")  # no ids in the file: split and position
            rows["split"].append(s)
            rows["image"].append(img)
            rows["second"].append(second.item() if isinstance(second, np.generic) else second)
            rows["text"].append(text)
            rows["attr"].append(list(attr) if isinstance(attr, (list, tuple)) and attr else None)
            boxes.append(b)
        files.append(path)
    ln = root / "ln_data"
    mask_dir = ln / "referit" / "mask" if index_name == "referit" else None
    ds = TransVGDataset(
        root=root,
        name=name,
        split=split,
        index_name=index_name,
        files=files,
        rows=rows,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        image_dir=Path(image_dir) if image_dir else ln / sub,
        mask_dir=mask_dir if mask_dir is not None and mask_dir.is_dir() else None,
        protocol=protocol or _INFO[index_name][2],
    )
    ds.index_problems.extend(bad.problems)
    return ds


for _n in _INFO:
    register_dataset(
        f"transvg-{_n}",
        layout="transvg",
        opener=open_transvg,
        detect=lambda root, _n=_n: any((root / "data" / _n).glob(f"{_n}_*.pth")),
        description=f"TransVG/ReSC index data/{_n}/{_n}_<split>.pth with images under ln_data/",
        protocol=_INFO[_n][2],
        index_name=_n,
    )
