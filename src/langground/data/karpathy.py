"""Image-text retrieval layouts: the Karpathy split files of COCO and Flickr30k, and COCO-captions json.

- ``coco-karpathy``: ``<root>/dataset_coco.json`` (Karpathy & Fei-Fei's split file: ``images`` with
  ``filepath`` (``train2014`` / ``val2014``), ``filename``, ``imgid``, ``cocoid``, ``split``
  (``train`` / ``restval`` / ``val`` / ``test``), ``sentids`` and ``sentences`` (``tokens``, ``raw``,
  ``imgid``, ``sentid``)); images at ``<root>/<filepath>/<filename>`` (or ``<root>/images/...``).
  ``restval`` joins ``train`` (``restval=True``, what ALBEF / BLIP / SLAN train on: 113K images); the
  5K ``test`` images with their 25K captions are the retrieval gallery of SLAN Tab. 2.
- ``flickr30k-karpathy``: ``<root>/dataset_flickr30k.json`` (same fields, no ``filepath``/``cocoid``;
  splits train 29K / val 1K / test 1K images); images under ``<root>/flickr30k-images/`` (or
  ``<root>/images/``). SLAN Tab. 1.
- :func:`open_coco_captions`: COCO captions layout (``images`` + ``annotations`` with ``caption``), one
  file per split; the synthetic world writes its scene captions this way (``captions_{split}.json``).

One record per caption (``task="retrieval"``): ``sample_id`` = the sentence id, ``image_id`` = the COCO
id / Flickr30k file stem / COCO-captions image id, no boxes. Image sizes come from the file headers when
asked (the Karpathy files do not store them), or from the COCO-captions ``width`` / ``height``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from langground.data.base import ALL_SPLITS, DatasetProtocol, RecordDataset, check_split, register_dataset
from langground.data.captions import RETRIEVAL_METRICS
from langground.data.coco import read_json
from langground.data.images import image_size, pick_image_dir
from langground.errors import DataError
from langground.types import GroundingRecord

COCO_KARPATHY = DatasetProtocol(
    benchmark="COCO retrieval (Karpathy split)",
    tasks=("retrieval",),
    metrics={"retrieval": RETRIEVAL_METRICS},
    input_size={"retrieval": 384},  # ALBEF / BLIP fine-tune retrieval at 384; SLAN pre-trains at 224
    splits=("train", "val", "test"),
    eval_splits=("val", "test"),
    notes="5K test images x 25K captions; restval counted as train; R@K both ways over the whole split",
)
FLICKR_KARPATHY = DatasetProtocol(
    benchmark="Flickr30k retrieval (Karpathy split)",
    tasks=("retrieval",),
    metrics={"retrieval": RETRIEVAL_METRICS},
    input_size={"retrieval": 384},
    splits=("train", "val", "test"),
    eval_splits=("val", "test"),
    notes="1K test images x 5K captions; R@K both ways over the whole split",
)
KARPATHY_SPLITS = ("train", "restval", "val", "test")


class CaptionsDataset(RecordDataset):
    """One record per caption: compact columns, records built on access."""

    layout = "captions"

    def __init__(
        self,
        *,
        rows: list[tuple[str, Any, Path, tuple[int, int] | None, str, str]],
        split_names: Sequence[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(task="retrieval", **kwargs)
        # (sample_id, image_id, image path, (h, w) or None, caption, split)
        self.rows = rows
        self.split_names = list(split_names)

    def __len__(self) -> int:
        return len(self.rows)

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        sample_id, image_id, path, size, text, split = self.rows[i]
        if size is None:
            size = image_size(path, sample_id) if resolve_size else (0, 0)
        return GroundingRecord(
            sample_id=sample_id,
            image_id=image_id,
            image_path=str(path),
            image_size=size,
            text=text,
            dataset=self.name,
            split=split,
            raw_text=text,
        )


def _field(entry: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = entry.get(key) if isinstance(entry, Mapping) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} is {value!r}; expected {getattr(kind, '__name__', kind)}")
    return value


def read_karpathy(
    path: Path, split: str, restval: bool
) -> tuple[list[tuple[str, Any, str, str, str]], list[str]]:
    """``(sample_id, image_id, relative image path, caption, split)`` rows of ``split`` and the splits present."""
    doc = read_json(path)
    images = doc.get("images") if isinstance(doc, Mapping) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected an object with an 'images' list (Karpathy split file)")
    rows: list[tuple[str, Any, str, str, str]] = []
    present: set[str] = set()
    seen: set[str] = set()
    for k, im in enumerate(images):
        where = f"{path}: images[{k}]"
        raw_split = _field(im, "split", str, where)
        if raw_split not in KARPATHY_SPLITS:
            raise DataError(f"{where}: split {raw_split!r}; expected one of {', '.join(KARPATHY_SPLITS)}")
        name = "train" if restval and raw_split == "restval" else raw_split
        present.add(name)
        if split != ALL_SPLITS and name != split:
            continue
        filename = _field(im, "filename", str, where)
        rel = f"{im['filepath']}/{filename}" if isinstance(im.get("filepath"), str) else filename
        image_id = im["cocoid"] if isinstance(im.get("cocoid"), int) else Path(filename).stem
        for j, sent in enumerate(_field(im, "sentences", list, where)):
            swhere = f"{where}.sentences[{j}]"
            sid = str(_field(sent, "sentid", int, swhere))
            raw = _field(sent, "raw", str, swhere).strip()
            if not raw:  # a few COCO captions are whitespace: fall back to the tokens
                raw = " ".join(_field(sent, "tokens", list, swhere))
            if sid in seen:
                raise DataError(f"{swhere}: duplicate sentid {sid}")
            seen.add(sid)
            rows.append((sid, image_id, rel, raw, name))
    return rows, sorted(present)


def _open_karpathy(
    root: Path,
    split: str,
    *,
    file: str,
    image_subdirs: Sequence[str],
    name: str,
    protocol: DatasetProtocol,
    task: str = "retrieval",
    restval: bool = True,
    image_dir: str | Path | None = None,
    strict: bool = True,
) -> CaptionsDataset:
    if task != "retrieval":
        raise DataError(f"{name}: task {task!r} is not available; the Karpathy files serve task=retrieval")
    path = root / file
    if not path.is_file():
        raise DataError(f"{path}: file not found (the Karpathy split file of {name})")
    rows, present = read_karpathy(path, split, restval)
    check_split(split, present, path)
    if image_dir is not None:
        base = Path(image_dir)
    else:
        base = pick_image_dir([root / d for d in image_subdirs], (r[2] for r in rows))
    out = [(sid, iid, base / rel, None, text, s) for sid, iid, rel, text, s in rows]
    return CaptionsDataset(
        rows=out,
        split_names=present,
        root=root,
        name=name,
        split=split,
        protocol=protocol,
        image_dirs=[base],
        files=[path],
    )


def open_coco_karpathy(root: Path, split: str, **kw: Any) -> CaptionsDataset:
    return _open_karpathy(root, split, file="dataset_coco.json", image_subdirs=(".", "images"), **kw)


def open_flickr_karpathy(root: Path, split: str, **kw: Any) -> CaptionsDataset:
    subdirs = ("flickr30k-images", "images", ".")
    return _open_karpathy(root, split, file="dataset_flickr30k.json", image_subdirs=subdirs, **kw)


def open_coco_captions(
    files: Mapping[str, Path],
    split: str,
    *,
    root: Path,
    image_dir: Path,
    name: str,
    protocol: DatasetProtocol,
) -> CaptionsDataset:
    """Captions of ``split`` (or all) from COCO-captions files, one per split name (``files[split]``)."""
    check_split(split, sorted(files), root)
    rows: list[tuple[str, Any, Path, tuple[int, int] | None, str, str]] = []
    used = []
    for s, path in files.items():
        if split != ALL_SPLITS and s != split:
            continue
        used.append(path)
        doc = read_json(path)
        if not isinstance(doc, Mapping) or not isinstance(doc.get("images"), list):
            raise DataError(f"{path}: expected 'images' and 'annotations' lists (COCO captions layout)")
        images: dict[Any, tuple[Path, tuple[int, int] | None]] = {}
        for k, im in enumerate(doc["images"]):
            where = f"{path}: images[{k}]"
            iid = _field(im, "id", (int, str), where)
            h, w = im.get("height"), im.get("width")
            size = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None
            images[iid] = (image_dir / _field(im, "file_name", str, where), size)
        for k, ann in enumerate(_field(doc, "annotations", list, str(path))):
            where = f"{path}: annotations[{k}]"
            iid = _field(ann, "image_id", (int, str), where)
            if iid not in images:
                raise DataError(f"{where}: image_id {iid!r} is not in 'images'")
            image_path, size = images[iid]
            text = _field(ann, "caption", str, where).strip()
            rows.append((str(_field(ann, "id", (int, str), where)), iid, image_path, size, text, s))
    return CaptionsDataset(
        rows=rows,
        split_names=sorted(files),
        root=root,
        name=name,
        split=split,
        protocol=protocol,
        image_dirs=[image_dir],
        files=used,
    )


register_dataset(
    "coco-karpathy",
    layout="karpathy",
    opener=open_coco_karpathy,
    detect=lambda root: (root / "dataset_coco.json").is_file(),
    description="COCO captions, Karpathy split file dataset_coco.json (task=retrieval; restval in train)",
    protocol=COCO_KARPATHY,
)
register_dataset(
    "flickr30k-karpathy",
    layout="karpathy",
    opener=open_flickr_karpathy,
    detect=lambda root: (root / "dataset_flickr30k.json").is_file(),
    description="Flickr30k captions, Karpathy split file dataset_flickr30k.json (task=retrieval)",
    protocol=FLICKR_KARPATHY,
)

__all__ = [
    "COCO_KARPATHY",
    "FLICKR_KARPATHY",
    "CaptionsDataset",
    "open_coco_captions",
    "open_coco_karpathy",
    "open_flickr_karpathy",
    "read_karpathy",
]


def open_synth_captions(root: Path, split: str, **kw: Any) -> RecordDataset:
    """The synthetic world's scene-graph captions (``synth`` with ``task=retrieval, captions=scene``)."""
    from langground.data.synth import open_synth

    kw.setdefault("task", "retrieval")
    kw.setdefault("captions", "scene")
    return open_synth(root, split, **kw)


SYNTH_CAPTIONS = DatasetProtocol(
    benchmark="langground synthetic world, scene captions",
    tasks=("retrieval",),
    metrics={"retrieval": RETRIEVAL_METRICS},
    input_size={},
    splits=("train", "val", "testA", "testB", "cogentB"),
    eval_splits=("val", "testA"),
    notes="4 scene-graph captions per image (synthetic/captions.py); R@K both ways over the whole split",
)
register_dataset(
    "synth-captions",
    layout="synth",
    opener=open_synth_captions,
    detect=lambda root: (root / "captions_train.json").is_file(),
    description="the synthetic world's scene-graph captions, COCO captions layout (task=retrieval)",
    protocol=SYNTH_CAPTIONS,
)
