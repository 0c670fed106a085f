"""The refer-toolkit / gRefCOCO index shared by RefCOCO(+/g), RefCLEF, gRefCOCO and the synthetic world.

A ref is one (set of) object(s) with several sentences; every sentence is one record. Refs are
compacted into numpy columns (ids, image, split code, CSR ann ids) and three Python lists per sentence
(text, raw text when it differs, extra keys when there are any), so 142k RefCOCO expressions cost a
few tens of MB; a record and its boxes are built in ``__getitem__``, its mask in ``load_mask()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langground.data.base import ALL_SPLITS, Collector, DatasetProtocol, Problem, RecordDataset, check_split
from langground.data.coco import CocoInstances
from langground.data.images import image_size, pick_image_dir
from langground.errors import DataError
from langground.types import GroundingRecord

# Keys of a refer sentence dict that records already carry; anything else goes to family/program/meta.
_SENTENCE_KEYS = frozenset({"sent_id", "sent", "raw", "tokens"})
_REF_KEYS = frozenset(
    {
        "ref_id",
        "ann_id",
        "image_id",
        "split",
        "sentences",
        "sent_ids",
        "category_id",
        "file_name",
        "no_target",
    }
)


def compact_sentence(d: dict[str, Any], where: str) -> tuple[int, str, str | None, dict[str, Any] | None]:
    """``(sent_id, sent, raw-if-different, extra keys)`` from a refer sentence dict."""
    if not isinstance(d, dict):
        raise DataError(f"{where}: sentence is a {type(d).__name__}, expected a dict with sent_id/sent/raw")
    if "sent_id" not in d:
        raise DataError(f"{where}: sentence {d.get('sent', '')!r} has no 'sent_id'")
    sent = d.get("sent", d.get("raw"))
    if sent is None:
        raise DataError(f"{where}: sentence {d['sent_id']} has neither 'sent' nor 'raw'")
    raw = d.get("raw")
    extras = {k: v for k, v in d.items() if k not in _SENTENCE_KEYS} or None
    return int(d["sent_id"]), str(sent), (None if raw is None or raw == sent else str(raw)), extras


def as_id_list(value: Any, what: str, where: str) -> list[int]:
    """Refer ``ann_id`` is an int; gRefCOCO's is a list (``[-1]`` for no target)."""
    if isinstance(value, (list, tuple)):
        items = value
    elif value is None:
        items = []
    else:
        items = [value]
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} {value!r} is not an int or a list of ints") from None


class RefsBuilder:
    """Accumulates refs (already filtered by split) into compact columns."""

    def __init__(self, path: Path, splits: str | None, bad: Collector | None = None) -> None:
        self.path = path
        self.want_split = splits
        # Malformed refs: raised at once (strict) or skipped and kept for `data check`.
        self.bad = bad or Collector(strict=True)
        self.all_splits: set[str] = set()
        self.ref_ids: list[int] = []
        self.ref_image: list[int] = []
        self.ref_split: list[str] = []
        self.ref_no_target: list[bool] = []
        self.ref_ann_off: list[int] = [0]
        self.ann_flat: list[int] = []
        self.ref_cat_off: list[int] = [0]
        self.cat_flat: list[int] = []
        self.ref_extra: list[dict[str, Any] | None] = []
        self.sent_ids: list[int] = []
        self.sent_ref: list[int] = []
        self.texts: list[str] = []
        self.raws: list[str | None] = []
        self.extras: list[dict[str, Any] | None] = []
        self.skipped_empty = 0

    def add(self, ref: Any, index: int, multi: bool) -> None:
        """Add one ref dict; ``multi``: gRefCOCO semantics (list ann ids, ``[-1]`` = no target)."""
        try:
            self._add(ref, index, multi)
        except DataError as e:
            rid = ref.get("ref_id", f"#{index}") if isinstance(ref, dict) else f"#{index}"
            self.bad(f"ref {rid}", e)

    def _add(self, ref: Any, index: int, multi: bool) -> None:
        if not isinstance(ref, dict):
            raise DataError(
                f"{self.path}: entry {index} is a {type(ref).__name__}, expected a ref dict "
                "with ref_id/ann_id/image_id/split/sentences"
            )
        for key in ("ref_id", "image_id", "split", "sentences"):
            if key not in ref:
                rid = ref.get("ref_id", f"#{index}")
                raise DataError(f"{self.path}: ref {rid}: missing key {key!r} (expected a refer-toolkit ref)")
        split = str(ref["split"])
        self.all_splits.add(split)
        if self.want_split not in (None, ALL_SPLITS) and split != self.want_split:
            return
        rid = ref["ref_id"]
        where = f"{self.path}: ref {rid}"
        sentences = ref["sentences"]
        if not isinstance(sentences, list):
            raise DataError(f"{where}: 'sentences' is a {type(sentences).__name__}, expected a list")
        if not sentences:
            self.skipped_empty += 1  # gRefCOCO: refs without sentences are skipped
            return
        if "ann_id" not in ref:
            raise DataError(f"{where}: missing key 'ann_id' (expected the referred annotation id(s))")
        ann_ids = as_id_list(ref["ann_id"], "ann_id", where)
        no_target = bool(ref.get("no_target", False)) or (multi and ann_ids in ([-1], []))
        ann_ids = [] if no_target else [a for a in ann_ids if a != -1]
        if not no_target and not ann_ids:
            raise DataError(
                f"{where}: no annotation ids and no 'no_target' flag; expected ann_id or no_target"
            )
        cats = [c for c in as_id_list(ref.get("category_id"), "category_id", where) if c != -1]
        compact = [s if isinstance(s, tuple) else compact_sentence(s, where) for s in sentences]
        try:
            rid, image_id = int(rid), int(ref["image_id"])
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: ref_id/image_id {rid!r}/{ref['image_id']!r} are not integers"
            ) from None
        r = len(self.ref_ids)
        self.ref_ids.append(rid)
        self.ref_image.append(image_id)
        self.ref_split.append(split)
        self.ref_no_target.append(no_target)
        self.ann_flat.extend(ann_ids)
        self.ref_ann_off.append(len(self.ann_flat))
        self.cat_flat.extend(cats)
        self.ref_cat_off.append(len(self.cat_flat))
        extra = {k: v for k, v in ref.items() if k not in _REF_KEYS}
        self.ref_extra.append(extra or None)
        for sid, sent, raw, extras in compact:
            self.sent_ids.append(sid)
            self.sent_ref.append(r)
            self.texts.append(sent)
            self.raws.append(raw)
            self.extras.append(extras)


class RefsDataset(RecordDataset):
    """Records of a refer / gRefCOCO layout split: one per sentence."""

    def __init__(
        self,
        *,
        builder: RefsBuilder,
        instances: CocoInstances,
        image_dirs: Sequence[Path],
        image_dir: Path | None,
        root: Path,
        name: str,
        split: str,
        protocol: DatasetProtocol,
        task: str,
        layout: str,
        strict: bool = True,
        text_fix: Callable[[str], str] | None = None,
    ) -> None:
        check_split(split, sorted(builder.all_splits), builder.path)
        super().__init__(
            root=root,
            name=name,
            split=split,
            protocol=protocol,
            image_dirs=image_dirs,
            task=task,
            files=(builder.path, instances.path),
        )
        self.layout = layout
        b = builder
        self.coco = instances
        self.ref_ids = np.asarray(b.ref_ids, np.int64)
        self.ref_image = np.asarray(b.ref_image, np.int64)
        self.split_names = sorted(set(b.ref_split))
        code = {s: i for i, s in enumerate(self.split_names)}
        self.ref_split = np.asarray([code[s] for s in b.ref_split], np.uint8)
        self.ref_no_target = np.asarray(b.ref_no_target, bool)
        self.ref_ann_off = np.asarray(b.ref_ann_off, np.int64)
        self.ann_flat = np.asarray(b.ann_flat, np.int64)
        self.ref_cat_off = np.asarray(b.ref_cat_off, np.int64)
        self.cat_flat = np.asarray(b.cat_flat, np.int64)
        self.ref_extra = b.ref_extra if any(e is not None for e in b.ref_extra) else None
        self.sent_ids = np.asarray(b.sent_ids, np.int64)
        self.sent_ref = np.asarray(b.sent_ref, np.int32)
        fix = text_fix or (lambda s: s)
        self.texts = [fix(t) for t in b.texts] if text_fix else b.texts
        self.raws = [None if r is None else fix(r) for r in b.raws] if text_fix else b.raws
        self.extras = b.extras if any(e is not None for e in b.extras) else None
        self.skipped_empty = b.skipped_empty
        self.bad_entries = b.bad.problems
        self.image_dir = image_dir or pick_image_dir(
            self.image_dirs, (self._file_name(int(i)) for i in dict.fromkeys(self.ref_image.tolist()))
        )
        self._index_checks(strict)

    # -- construction-time checks -----------------------------------------------------------------
    def _index_checks(self, strict: bool) -> None:
        probs = self.index_problems
        probs.extend(self.bad_entries)
        probs.extend(self.coco.problems)
        for what, ids in (("sent_id", self.sent_ids), ("ref_id", self.ref_ids)):
            uniq, counts = np.unique(ids, return_counts=True)
            for dup in uniq[counts > 1][:50].tolist():
                probs.append(
                    Problem("duplicate id", f"{what} {dup}", f"{self.files[0].name}: {what} repeats")
                )
        missing = sorted({int(a) for a in self.ann_flat.tolist() if not self.coco.has_ann(int(a))})
        for a in missing:
            refs = self.ref_ids[
                np.searchsorted(self.ref_ann_off, np.flatnonzero(self.ann_flat == a), "right") - 1
            ]
            probs.append(
                Problem(
                    "dangling reference",
                    f"ref {int(refs[0])}",
                    f"points at annotation {a}, which is not in {self.coco.path.name}",
                )
            )
        if strict and missing:
            p = probs[-len(missing)]
            raise DataError(f"{self.files[0]}: {p.item} {p.message} ({len(missing)} such annotation ids)")

    # -- Sequence ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sent_ids)

    def _file_name(self, image_id: int) -> str:
        entry = self.coco.images.get(image_id)
        if entry is not None and entry[0]:
            return entry[0]
        return f"COCO_train2014_{image_id:012d}.jpg"  # the refer toolkit's COCO naming

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self._file_name(image_id)

    def _size(self, image_id: int, path: Path, record: str, resolve: bool) -> tuple[int, int]:
        entry = self.coco.images.get(image_id)
        if entry is not None and entry[1] > 0 and entry[2] > 0:
            return entry[1], entry[2]
        return image_size(path, record) if resolve else (0, 0)

    def ann_ids_of(self, ref_row: int) -> tuple[int, ...]:
        return tuple(self.ann_flat[self.ref_ann_off[ref_row] : self.ref_ann_off[ref_row + 1]].tolist())

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        r = int(self.sent_ref[i])
        sid = int(self.sent_ids[i])
        rid = int(self.ref_ids[r])
        image_id = int(self.ref_image[r])
        ann_ids = self.ann_ids_of(r)
        who = f"ref {rid}"
        path = self.image_path(image_id)
        size = self._size(image_id, path, f"sent {sid}", resolve_size)
        boxes = self.coco.boxes_xyxy(ann_ids, who)
        has_mask = all(self.coco.ann_seg[self.coco.row(a, who)] is not None for a in ann_ids)
        mask_loader = (
            functools.partial(self._mask, ann_ids, image_id, str(path), f"sent {sid}") if has_mask else None
        )
        extras = dict(self.extras[i]) if self.extras is not None and self.extras[i] else {}
        family = extras.pop("family", None)
        program = extras.pop("program", None)
        meta: dict[str, Any] = extras
        cats = self.cat_flat[self.ref_cat_off[r] : self.ref_cat_off[r + 1]].tolist()
        if cats:
            meta["category_ids"] = tuple(cats)
        if self.ref_extra is not None and self.ref_extra[r]:
            meta.setdefault("ref", self.ref_extra[r])
        text = self.texts[i]
        raw = self.raws[i]
        return GroundingRecord(
            sample_id=str(sid),
            image_id=image_id,
            image_path=str(path),
            image_size=size,
            text=text,
            boxes=boxes,
            no_target=bool(self.ref_no_target[r]),
            dataset=self.name,
            split=self.split_names[int(self.ref_split[r])],
            raw_text=text if raw is None else raw,
            family=None if family is None else str(family),
            program=program,
            ref_id=rid,
            ann_ids=ann_ids,
            mask_loader=mask_loader,
            meta=meta,
        )

    def _mask(self, ann_ids: tuple[int, ...], image_id: int, path: str, record: str) -> np.ndarray:
        h, w = self._size(image_id, Path(path), record, True)
        return self.coco.union_mask(ann_ids, h, w)

    def annotation_areas(self) -> Iterator[tuple[str, float, Callable[[], int]]]:
        seen: set[int] = set()
        for r in range(len(self.ref_ids)):
            image_id = int(self.ref_image[r])
            for a in self.ann_ids_of(r):
                if a in seen or not self.coco.has_ann(a):
                    continue
                seen.add(a)
                row = self.coco.row(a)
                if self.coco.ann_seg[row] is None:
                    continue
                area = float(self.coco.ann_area[row])

                def decoded(a: int = a, image_id: int = image_id) -> int:
                    path = self.image_path(image_id)
                    h, w = self._size(image_id, path, f"ann {a}", True)
                    return self.coco.decoded_area(a, h, w)

                yield f"ann {a}", area, decoded

    def referenced_ids(self) -> tuple[set[int], set[int]]:
        return set(self.ann_flat.tolist()), set(self.ref_image.tolist())


def needed_ids(builder: RefsBuilder) -> tuple[set[int], set[int]]:
    """Annotation and image ids the kept refs point at (so instances.json keeps only those)."""
    return set(builder.ann_flat), set(builder.ref_image)


def image_candidates(root: Path, extra: Sequence[str] = ()) -> list[Path]:
    """Where refer-style layouts keep images, in the order the official loaders look."""
    names = ["images/train2014", "images/mscoco/images/train2014", *extra, "images"]
    return [root / n for n in names]


def find_root_and_dir(root: Path, subdir: str, marker: str) -> tuple[Path, Path]:
    """``(data root, dataset dir)``: ``root/subdir`` normally, or ``root`` itself if it holds ``marker``."""
    if (root / subdir).is_dir():
        return root, root / subdir
    if list(root.glob(marker)):
        return root.parent, root
    return root, root / subdir


def fix_py2_text(s: str) -> str:
    """Undo latin1 decoding of Python-2 byte strings that were really UTF-8 ("cafÃ©" -> "café")."""
    if s.isascii():
        return s
    try:
        return s.encode("latin1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return s


def describe_refs_file(ds_dir: Path, pattern: str) -> str:
    found = sorted(p.name for p in ds_dir.glob(pattern)) if ds_dir.is_dir() else []
    return f"found: {', '.join(found)}" if found else f"no {pattern} in {ds_dir}"
