"""CLEVR-Ref+ layout: ``scenes/clevr_ref+_{split}_scenes.json`` + ``refexps/clevr_ref+_{split}_refexps.json``.

Scenes are CLEVR scenes plus ``obj_mask`` (per object, keys ``"1"``.. (1-based): comma-separated run
lengths over the ROW-major 320x480 image, starting with zeros) and ``obj_bbox`` (xywh). A refexp's
referents are the ``_output`` of its program's LAST node: 0-based object indices, possibly several
(union mask, one box each; the official util sums masks, we OR them). Images: ``images/{split}/``.
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
    RecordDataset,
    check_split,
    register_dataset,
)
from langground.data.clevr import CLEVR_SIZE, ProgramCodec
from langground.data.coco import read_json
from langground.data.protocols import CLEVR_REF
from langground.errors import DataError
from langground.ops import masks as M
from langground.types import GroundingRecord

_PREFIX = "clevr_ref+_"


def _read_scenes(path: Path) -> dict[int, tuple[str | None, dict[str, str], dict[str, list[float]]]]:
    scenes: dict[int, tuple[str | None, dict[str, str], dict[str, list[float]]]] = {}

    def hook(d: dict[str, Any]) -> Any:
        if "objects" in d and "image_index" in d:
            # Keep masks and boxes only: relationships/directions are large and unused here.
            scenes[int(d["image_index"])] = (
                d.get("image_filename"),
                d.get("obj_mask") or {},
                d.get("obj_bbox") or {},
            )
            return None
        return d

    top = read_json(path, hook)
    if not isinstance(top, dict) or "scenes" not in top:
        raise DataError(f"{path}: missing key 'scenes' (expected a CLEVR-Ref+ scenes file)")
    return scenes


class ClevrRefDataset(RecordDataset):
    layout = "clevr-ref+"

    def __init__(
        self,
        *,
        root: Path,
        name: str,
        split: str,
        files: list[Path],
        image_base: Path,
        splits: list[str],
        rows: dict[str, list[Any]],
        scenes: dict[tuple[str, int], Any],
        image_size_hw: tuple[int, int],
        protocol: DatasetProtocol = CLEVR_REF,
    ) -> None:
        super().__init__(
            root=root,
            name=name,
            split=split,
            protocol=protocol,
            image_dirs=[image_base / s for s in splits],
            task="res",
            files=files,
        )
        self.image_base = image_base
        self.split_names = splits
        code = {s: i for i, s in enumerate(splits)}
        self.rsplit = np.asarray([code[s] for s in rows["split"]], np.uint8)
        self.rids = np.asarray(rows["rid"], np.int64)
        self.image_index = np.asarray(rows["image_index"], np.int64)
        self.ref_off = np.cumsum([0] + [len(r) for r in rows["referents"]]).astype(np.int64)
        self.ref_flat = np.asarray([k for r in rows["referents"] for k in r], np.int64)
        self.texts: list[str] = rows["text"]
        self.families: list[str | None] = rows["family"]
        self.programs: list[Any] = rows["program"]
        self.scenes = scenes
        self.size = image_size_hw

    def __len__(self) -> int:
        return len(self.rids)

    def _scene(self, split: str, index: int, rid: int) -> Any:
        scene = self.scenes.get((split, index))
        if scene is None:
            raise DataError(
                f"{self.root}: refexp {rid} ({split}): image_index {index} has no scene in "
                f"{_PREFIX}{split}_scenes.json"
            )
        return scene

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        split = self.split_names[int(self.rsplit[i])]
        rid, index = int(self.rids[i]), int(self.image_index[i])
        fname, _masks, bboxes = self._scene(split, index, rid)
        fname = fname or f"CLEVR_{split}_{index:06d}.png"
        objs = tuple(self.ref_flat[self.ref_off[i] : self.ref_off[i + 1]].tolist())
        boxes = np.zeros((len(objs), 4), np.float32)
        for j, k in enumerate(objs):
            b = bboxes.get(str(k + 1))  # obj_bbox / obj_mask keys are 1-based
            if b is None or len(b) != 4:
                raise DataError(
                    f"{_PREFIX}{split}_scenes.json: image {index}: no obj_bbox[{k + 1!r}] "
                    f"for referent {k} of refexp {rid} (expected xywh)"
                )
            boxes[j] = (b[0], b[1], b[0] + b[2], b[1] + b[3])
        return GroundingRecord(
            sample_id=str(rid),
            image_id=index,
            image_path=str(self.image_base / split / fname),
            image_size=self.size,
            text=self.texts[i],
            boxes=boxes,
            no_target=not objs,
            dataset=self.name,
            split=split,
            raw_text=self.texts[i],
            family=self.families[i],
            program=ProgramCodec.decode(self.programs[i]),
            ann_ids=objs,
            mask_loader=functools.partial(self._mask, split, index, objs, rid),
            meta={"object_indices": objs},
        )

    def _mask(self, split: str, index: int, objs: tuple[int, ...], rid: int) -> np.ndarray:
        _, masks, _ = self._scene(split, index, rid)
        h, w = self.size
        out = np.zeros((h, w), np.uint8)
        for k in objs:
            runs = masks.get(str(k + 1))
            if runs is None:
                raise DataError(
                    f"{_PREFIX}{split}_scenes.json: image {index}: no obj_mask[{k + 1!r}] for "
                    f"refexp {rid} (expected row-major run lengths)"
                )
            try:
                out |= M.row_major_runs_to_mask(runs, h, w)
            except ValueError as e:
                raise DataError(f"{_PREFIX}{split}_scenes.json: image {index} object {k + 1}: {e}") from None
        return out


def _read_refexps(
    path: Path, split: str, codec: ProgramCodec, rows: dict[str, list[Any]], bad: Collector
) -> None:
    count = [0]

    def hook(d: dict[str, Any]) -> Any:
        if "refexp" not in d or not isinstance(d.get("refexp"), str):
            return d
        n = count[0]
        count[0] += 1
        rid = d.get("refexp_index", d.get("refexp_id", n))
        try:
            parse(d, rid)
        except DataError as e:
            bad(f"refexp {rid}", e)
        return None

    def parse(d: dict[str, Any], rid: Any) -> None:
        program = d.get("program")
        if not isinstance(program, list) or not program or not isinstance(program[-1], dict):
            raise DataError(f"{path}: refexp {rid}: missing key 'program' (expected a list of nodes)")
        out = program[-1].get("_output")
        if out is None:
            raise DataError(f"{path}: refexp {rid}: last program node has no '_output' (the referents)")
        try:
            referents = [int(out)] if isinstance(out, int) else [int(k) for k in out]
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: refexp {rid}: last node's _output {out!r} is not object indices (expected 0-based ints)"
            ) from None
        if "image_index" not in d:
            raise DataError(f"{path}: refexp {rid}: missing key 'image_index' (expected the scene's index)")
        template = d.get("template_filename")
        rows["rid"].append(int(rid))
        rows["split"].append(split)
        rows["image_index"].append(int(d["image_index"]))
        rows["referents"].append(referents)
        rows["text"].append(d["refexp"])
        rows["family"].append(None if template is None else sys.intern(Path(str(template)).stem))
        rows["program"].append(
            codec.encode([{k: v for k, v in node.items() if k != "_output"} for node in program])
        )

    top = read_json(path, hook)
    if not isinstance(top, dict) or not isinstance(top.get("refexps"), list):
        raise DataError(f"{path}: missing key 'refexps' (expected a CLEVR-Ref+ refexps file)")
    for i, x in enumerate(top["refexps"]):
        if x is not None:
            rid = x.get("refexp_index", i) if isinstance(x, dict) else i
            bad(
                f"refexp {rid}",
                DataError(f"{path}: refexp {rid}: missing key 'refexp' (the expression text)"),
            )


def open_clevr_ref(
    root: Path,
    split: str,
    *,
    name: str = "clevr-ref+",
    image_dir: str | Path | None = None,
    image_size_hw: tuple[int, int] = CLEVR_SIZE,
    protocol: DatasetProtocol = CLEVR_REF,
    strict: bool = True,
) -> ClevrRefDataset:
    rdir, sdir = root / "refexps", root / "scenes"
    available = sorted(
        p.name[len(_PREFIX) : -len("_refexps.json")] for p in rdir.glob(f"{_PREFIX}*_refexps.json")
    )
    if not available:
        raise DataError(f"{rdir}: no {_PREFIX}<split>_refexps.json files (expected the CLEVR-Ref+ layout)")
    check_split(split, available, rdir)
    splits = available if split == ALL_SPLITS else [split]
    codec = ProgramCodec()
    rows: dict[str, list[Any]] = {
        k: [] for k in ("rid", "split", "image_index", "referents", "text", "family", "program")
    }
    scenes: dict[tuple[str, int], Any] = {}
    files = []
    bad = Collector(strict)
    for s in splits:
        spath = sdir / f"{_PREFIX}{s}_scenes.json"
        if not spath.is_file():
            raise DataError(f"{spath}: scenes file not found (needed for the masks of {s} refexps)")
        rpath = rdir / f"{_PREFIX}{s}_refexps.json"
        _read_refexps(rpath, s, codec, rows, bad)
        scenes.update({(s, k): v for k, v in _read_scenes(spath).items()})
        files += [rpath, spath]
    ds = ClevrRefDataset(
        root=root,
        name=name,
        split=split,
        files=files,
        protocol=protocol,
        image_base=Path(image_dir) if image_dir else root / "images",
        splits=splits,
        rows=rows,
        scenes=scenes,
        image_size_hw=image_size_hw,
    )
    ds.index_problems.extend(bad.problems)
    return ds


register_dataset(
    "clevr-ref+",
    layout="clevr-ref+",
    opener=open_clevr_ref,
    detect=lambda root: any((root / "refexps").glob(f"{_PREFIX}*_refexps.json")),
    description="CLEVR-Ref+ referring expressions with row-major RLE object masks (overall IoU)",
    protocol=CLEVR_REF,
)
