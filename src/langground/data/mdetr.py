"""MDETR refexp layout: ``finetune_{refcoco,refcoco+,refcocog}_{split}.json``.

COCO-style, but ONE image entry per expression: the entry carries ``caption``, ``original_id`` (the
COCO image id), ``file_name``, ``height``/``width`` (and ``tokens_negative``, ``dataset_name``...);
its annotations carry ``bbox`` (xywh) and ``tokens_positive`` (character spans of the caption that
name the object). Looked for in ``<root>``, ``<root>/mdetr_annotations`` and ``<root>/annotations``;
images under ``<root>/train2014``, ``<root>/images/train2014`` or ``<root>/coco/train2014``.

``task`` picks the records (``open_kwargs: {task: phrase}``); both give one record per image entry:
- ``rec`` (default): the caption, all its boxes, ``tokens_positive`` left in ``meta``;
- ``phrase``: also ``phrases``: the annotations that name the same ``tokens_positive`` spans form one
  phrase with all their boxes (separate boxes; a refexp entry usually has one), its ``span`` the
  enclosing ``(first start, last end)`` of those spans (MDETR may split one phrase, "man" + "on the
  left"), ``phrase_id`` the annotation ids joined by ``,``. Annotations without ``tokens_positive``
  name no phrase; entries with no phrase are skipped (``skipped["no_phrase_caption"]``).
"""

from __future__ import annotations

import functools
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
from langground.data.captions import caption_protocol
from langground.data.coco import compact_segmentation, read_json
from langground.data.images import image_size, pick_image_dir
from langground.data.protocols import REFCOCO, REFCOCO_PLUS, REFCOCOG_UMD
from langground.errors import DataError
from langground.ops import masks as M
from langground.tasks import get_task
from langground.types import GroundingRecord, Phrase

_PROTOCOLS = {"refcoco": REFCOCO, "refcoco+": REFCOCO_PLUS, "refcocog": REFCOCOG_UMD}
_ANN_DIRS = ("", "mdetr_annotations", "annotations")
_IMAGE_DIRS = ("train2014", "images/train2014", "coco/train2014", "images/mscoco/images/train2014", "images")
TASKS = ("rec", "phrase")


def _ann_files(root: Path, dataset: str) -> dict[str, Path]:
    prefix = f"finetune_{dataset}_"
    found: dict[str, Path] = {}
    for sub in _ANN_DIRS:
        for p in sorted((root / sub).glob(f"{prefix}*.json")):
            split = p.name[len(prefix) : -len(".json")]
            if split:
                found.setdefault(split, p)
    return found


class MdetrDataset(RecordDataset):
    layout = "mdetr"

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        split: str,
        dataset: str,
        files: list[Path],
        entries: list[tuple[Any, ...]],
        anns: dict[tuple[str, int], list[tuple[Any, ...]]],
        image_dir: Path,
        candidates: list[Path],
        problems: list[Problem],
        protocol: DatasetProtocol,
        task: str = "rec",
        phrases: list[tuple[int, list[tuple[tuple[int, int], list[int]]]]] | None = None,
    ) -> None:
        super().__init__(
            root=root,
            name=name,
            split=split,
            protocol=protocol,
            image_dirs=candidates,
            task=task,
            files=files,
        )
        # task "phrase": (entry index, [(span, positions of its annotations)]) per record.
        self.phrases = phrases
        self.entries = entries  # (split, entry id, coco image id, file name, h, w, caption, extra meta)
        self.anns = anns  # (split, entry id) -> [(ann id, bbox xywh, tokens_positive, segmentation)]
        self.image_dir = image_dir
        self.split_names = sorted({e[0] for e in entries}) or [split]
        self.index_problems.extend(problems)

    def __len__(self) -> int:
        return len(self.entries) if self.phrases is None else len(self.phrases)

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        if self.phrases is None:
            return self._entry(i, resolve_size)
        entry, groups = self.phrases[i]
        record = self._entry(entry, resolve_size)
        record.phrases = tuple(
            Phrase(
                span=span,
                boxes=record.boxes[positions].copy(),
                phrase_id=",".join(str(record.ann_ids[k]) for k in positions),
            )
            for span, positions in groups
        )
        return record

    def _entry(self, i: int, resolve_size: bool) -> GroundingRecord:
        split, eid, image_id, fname, h, w, caption, extra = self.entries[i]
        path = self.image_dir / fname
        if not (h and w):
            h, w = image_size(path, f"entry {eid}") if resolve_size else (0, 0)
        anns = self.anns.get((split, eid), [])
        boxes = np.asarray([a[1] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        segs = [a[3] for a in anns]
        loader = None
        if anns and all(s is not None for s in segs):
            loader = functools.partial(self._mask, eid, str(path), tuple(segs))
        meta = dict(extra)
        meta["tokens_positive"] = [a[2] for a in anns]
        return GroundingRecord(
            sample_id=str(eid),
            image_id=image_id,
            image_path=str(path),
            image_size=(h, w),
            text=caption,
            boxes=boxes,
            no_target=not anns,
            dataset=self.name,
            split=split,
            raw_text=caption,
            ann_ids=tuple(a[0] for a in anns),
            mask_loader=loader,
            meta=meta,
        )

    def _mask(self, eid: int, path: str, segs: tuple[Any, ...]) -> np.ndarray:
        h, w = image_size(path, f"entry {eid}")
        try:
            return M.union_rle([M.segmentation_to_rle(s, h, w) for s in segs], (h, w))
        except ValueError as e:
            raise DataError(f"{self.files[0]}: entry {eid}: bad segmentation: {e}") from None


def _read(
    path: Path,
    split: str,
    entries: list[Any],
    anns: dict[Any, list[Any]],
    problems: list[Problem],
    bad: Collector,
) -> None:
    """Parse one finetune json: image entries (one per expression) and their annotations."""

    def hook(d: dict[str, Any]) -> Any:
        if "bbox" in d and "image_id" in d:
            aid = d.get("original_id", d.get("id"))
            try:
                bbox = d["bbox"]
                if not (
                    isinstance(bbox, list)
                    and len(bbox) == 4
                    and all(isinstance(v, (int, float)) for v in bbox)
                ):
                    raise DataError(f"{path}: annotation {aid}: bbox {bbox!r} is not [x, y, w, h] numbers")
                seg = compact_segmentation(d["segmentation"]) if d.get("segmentation") else None
                anns.setdefault((split, int(d["image_id"])), []).append(
                    (aid, bbox, d.get("tokens_positive", []), seg)
                )
            except DataError as e:
                bad(f"ann {aid}", e)
            return None
        if "caption" in d or ("file_name" in d and "id" in d):
            eid = d.get("id")
            try:
                for key in ("id", "file_name", "caption"):
                    if key not in d:
                        raise DataError(
                            f"{path}: image entry {eid}: missing key {key!r} (MDETR refexp layout)"
                        )
                extra = {
                    k: d[k]
                    for k in ("tokens_negative", "dataset_name", "sentence_id", "tokens_positive_eval")
                    if k in d
                }
                image_id = d.get("original_id", d.get("original_img_id", d["id"]))
                entries.append(
                    (
                        split,
                        int(d["id"]),
                        image_id,
                        d["file_name"],
                        int(d.get("height") or 0),
                        int(d.get("width") or 0),
                        d["caption"],
                        extra,
                    )
                )
            except (TypeError, ValueError) as e:
                if not isinstance(e, DataError):
                    e = DataError(f"{path}: image entry {eid}: {e} (expected integer id/height/width)")
                bad(f"entry {eid}", e)
            return None
        return d

    n0 = len(entries)
    top = read_json(path, hook)
    if (
        not isinstance(top, dict)
        or not isinstance(top.get("images"), list)
        or not isinstance(top.get("annotations"), list)
    ):
        raise DataError(f"{path}: missing key 'images'/'annotations' (expected an MDETR finetune json)")
    for x in top["images"]:
        if x is not None:
            eid = x.get("id") if isinstance(x, dict) else None
            bad(f"entry {eid}", DataError(f"{path}: image entry {eid}: missing keys 'file_name'/'caption'"))
    for x in top["annotations"]:
        if x is not None:
            aid = x.get("id") if isinstance(x, dict) else None
            missing = "bbox" if isinstance(x, dict) and "bbox" not in x else "image_id"
            bad(
                f"ann {aid}",
                DataError(f"{path}: annotation {aid}: missing key {missing!r} (expected bbox xywh)"),
            )
    ids = [e[1] for e in entries[n0:]]
    known = set(ids)
    if len(known) != len(ids):
        seen: set[int] = set()
        for x in ids:
            if x in seen:
                problems.append(Problem("duplicate id", f"entry {x}", f"{path.name}: image entry id repeats"))
            seen.add(x)
    for _, eid in [k for k in anns if k[0] == split and k[1] not in known]:
        problems.append(
            Problem(
                "dangling reference",
                f"entry {eid}",
                f"{path.name}: annotations of image_id {eid}, no such entry",
            )
        )


def open_mdetr(
    root: Path,
    split: str,
    *,
    name: str,
    dataset: str,
    image_dir: str | Path | None = None,
    protocol: DatasetProtocol | None = None,
    strict: bool = True,
    task: str = "rec",
) -> MdetrDataset:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r} for MDETR refexp files; expected one of {', '.join(TASKS)}")
    files = _ann_files(root, dataset)
    if not files:
        raise DataError(
            f"{root}: no finetune_{dataset}_<split>.json (looked in {', '.join(_ANN_DIRS[1:])} too)"
        )
    check_split(split, sorted(files), files[next(iter(files))].parent)
    splits = sorted(files) if split == ALL_SPLITS else [split]
    entries: list[Any] = []
    anns: dict[Any, list[Any]] = {}
    problems: list[Problem] = []
    bad = Collector(strict, problems)
    for s in splits:
        _read(files[s], s, entries, anns, problems, bad)
    candidates = [root / d for d in _IMAGE_DIRS]
    chosen = Path(image_dir) if image_dir else pick_image_dir(candidates, (e[3] for e in entries))
    protocol = protocol or _PROTOCOLS[dataset]
    phrases, skipped = None, {}
    if get_task(task).uses_phrases:
        phrases, skipped = _phrase_groups(entries, anns, {s: files[s] for s in splits}, bad)
        protocol = caption_protocol(protocol, "phrase")
    ds = MdetrDataset(
        root=root,
        name=name,
        split=split,
        dataset=dataset,
        files=[files[s] for s in splits],
        entries=entries,
        anns=anns,
        image_dir=chosen,
        candidates=candidates,
        problems=problems,
        protocol=protocol,
        task=task,
        phrases=phrases,
    )
    ds.skipped = skipped  # type: ignore[attr-defined]
    return ds


def _phrase_groups(
    entries: list[Any], anns: dict[Any, list[Any]], files: dict[str, Path], bad: Collector
) -> tuple[list[tuple[int, list[tuple[tuple[int, int], list[int]]]]], dict[str, int]]:
    """Per entry with phrases: its annotations grouped by their ``tokens_positive`` spans."""
    out = []
    skipped = {"no_phrase_caption": 0}
    for i, (split, eid, _, _, _, _, caption, _) in enumerate(entries):
        groups: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for k, (aid, _, spans, _) in enumerate(anns.get((split, eid), [])):
            try:
                key = _spans(spans, len(caption))
            except DataError as e:
                bad(f"ann {aid}", DataError(f"{files[split]}: annotation {aid} of entry {eid}: {e}"))
                continue
            if key:
                groups.setdefault(key, []).append(k)
        if not groups:
            skipped["no_phrase_caption"] += 1
            continue
        phrases = [((min(a for a, _ in key), max(b for _, b in key)), ks) for key, ks in groups.items()]
        out.append((i, sorted(phrases, key=lambda p: p[0])))
    return out, skipped


def _spans(value: Any, length: int) -> tuple[tuple[int, int], ...]:
    """``tokens_positive`` -> sorted ``(start, end)`` pairs, checked against the caption's length."""
    if not isinstance(value, list):
        raise DataError(f"tokens_positive {value!r} is not a list of [start, end] character spans")
    spans = []
    for span in value:
        ok = isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) for v in span)
        if not ok or not 0 <= span[0] < span[1] <= length:
            raise DataError(
                f"tokens_positive span {span!r} is not [start, end) character offsets in a caption of "
                f"{length} characters"
            )
        spans.append((int(span[0]), int(span[1])))
    return tuple(sorted(spans))


for _ds in ("refcoco", "refcoco+", "refcocog"):
    register_dataset(
        f"mdetr-{_ds}",
        layout="mdetr",
        opener=open_mdetr,
        detect=lambda root, _ds=_ds: bool(_ann_files(root, _ds)),
        description=f"MDETR finetune_{_ds}_<split>.json (one COCO image entry per expression; "
        "task=phrase: its tokens_positive phrases)",
        protocol=_PROTOCOLS[_ds],
        dataset=_ds,
    )
