"""The synthetic world (``langground.data.synthetic.generate_world``), read through the real layouts.

``<root>/synth/refs(synth).p`` (refer layout, single-target refs), ``<root>/synth/grefs(synth).json``
(gRefCOCO layout, all refs incl. multi- and no-target), ``<root>/synth/instances.json`` (COCO, RLE
masks), images under ``<root>/images/`` (``file_name`` relative to it), and the CLEVR layout
``<root>/scenes.json`` + ``<root>/questions.json`` (one file each, a ``split`` field per entry),
plus ``<root>/dataset.json`` (generation settings). ``task`` picks the view:
``rec``/``res`` -> refer layout, ``gref``/``gres`` -> gRefCOCO layout, ``vqa`` -> questions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langground.data.base import Collector, DatasetProtocol, RecordDataset, check_split, register_dataset
from langground.data.clevr import QuestionsDataset, read_questions
from langground.data.coco import read_json
from langground.data.grefcoco import open_grefcoco
from langground.data.images import image_size
from langground.data.protocols import SYNTH
from langground.data.refer import open_refer
from langground.errors import DataError

SYNTH_TASKS = ("rec", "res", "gref", "gres", "vqa")


def read_scenes(path: Path) -> dict[int, dict[str, Any]]:
    """``image_index -> {image_filename, split, n_objects, size}`` from a CLEVR-layout scenes file."""
    scenes: dict[int, dict[str, Any]] = {}

    def hook(d: dict[str, Any]) -> Any:
        if "objects" in d and ("image_index" in d or "image_filename" in d):
            index = int(d.get("image_index", len(scenes)))
            h = d.get("height", d.get("image_height"))
            w = d.get("width", d.get("image_width"))
            if h is None and isinstance(d.get("image_size"), list) and len(d["image_size"]) == 2:
                w, h = d["image_size"]  # stored as (width, height), like PIL
            scenes[index] = {
                "image_filename": d.get("image_filename"),
                "split": d.get("split"),
                "n_objects": len(d["objects"]) if isinstance(d["objects"], list) else 0,
                "size": (int(h), int(w)) if h and w else None,
            }
            return None
        return d

    top = read_json(path, hook)
    items = top.get("scenes") if isinstance(top, dict) else top
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a 'scenes' list (CLEVR layout)")
    return scenes


def open_synth_vqa(
    root: Path, split: str, *, name: str = "synth", protocol: DatasetProtocol = SYNTH, strict: bool = True
) -> QuestionsDataset:
    qpath = root / "questions.json"
    spath = root / "scenes.json"
    for p in (qpath, spath):
        if not p.is_file():
            raise DataError(f"{p}: file not found (the synthetic world's CLEVR-layout {p.name})")
    bad = Collector(strict)
    cols, seen = read_questions(qpath, split, None, bad)
    check_split(split, sorted(seen), qpath)
    scenes = read_scenes(spath)
    images = root / "images"
    for i, fname in enumerate(cols["image_filename"]):
        if fname is None:
            scene = scenes.get(cols["image_index"][i])
            if scene is None or not scene["image_filename"]:
                raise DataError(
                    f"{qpath}: question {cols['qid'][i]}: image_index {cols['image_index'][i]} "
                    f"is not in {spath.name} (expected a scene with image_filename)"
                )
            cols["image_filename"][i] = scene["image_filename"]

    def size_fn(index: int, split: str, path: Path, resolve: bool) -> tuple[int, int]:
        scene = scenes.get(index)
        if scene is not None and scene["size"]:
            return scene["size"]
        return image_size(path, f"image {index}") if resolve else (0, 0)

    ds = QuestionsDataset(
        root=root,
        name=name,
        split=split,
        protocol=protocol,
        image_dirs=[images],
        files=[qpath, spath],
        questions=cols,
        split_names=sorted(set(cols["split"])),
        image_path_fn=lambda s, f: images / f,
        size_fn=size_fn,
    )
    ds.layout = "clevr"
    ds.index_problems.extend(bad.problems)
    ds.scene_objects = {i: s["n_objects"] for i, s in scenes.items()}  # type: ignore[attr-defined]
    return ds


def open_synth(
    root: Path,
    split: str,
    *,
    name: str = "synth",
    task: str = "gref",
    strict: bool = True,
    image_dir: str | Path | None = None,
    protocol: DatasetProtocol = SYNTH,
) -> RecordDataset:
    """Open the synthetic world under ``root`` for ``task`` (rec/res/gref/gres/vqa)."""
    if task not in SYNTH_TASKS:
        raise DataError(f"unknown task {task!r} for synth; expected one of {', '.join(SYNTH_TASKS)}")
    if (root / "synth").is_dir() is False and (root / "questions.json").is_file() is False:
        raise DataError(
            f"{root}: not a synthetic world (expected {root / 'synth'} and {root / 'questions.json'})"
        )
    if task == "vqa":
        return open_synth_vqa(root, split, name=name, protocol=protocol, strict=strict)
    common = dict(
        name=name,
        dataset="synth",
        split_by="synth",
        protocol=protocol,
        images_subdir="images",
        image_dir=image_dir,
        strict=strict,
        task=task,
    )
    if task in ("rec", "res"):
        return open_refer(root, split, **common)
    return open_grefcoco(root, split, **common)


def read_dataset_info(root: Path) -> dict[str, Any] | None:
    path = root / "dataset.json"
    return read_json(path) if path.is_file() else None


register_dataset(
    "synth",
    layout="synth",
    opener=open_synth,
    detect=lambda root: (root / "synth").is_dir() or (root / "dataset.json").is_file(),
    description="langground's synthetic referring world (task=rec|res|gref|gres|vqa)",
    protocol=SYNTH,
)
