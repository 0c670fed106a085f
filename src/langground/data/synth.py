"""The synthetic world (``langground.data.synthetic.generate_world``), read through the real layouts.

``<root>/synth/refs(synth).p`` (refer layout, single-target refs), ``<root>/synth/grefs(synth).json``
(gRefCOCO layout, all refs incl. multi- and no-target), ``<root>/synth/instances.json`` (COCO, RLE
masks), images under ``<root>/images/`` (``file_name`` relative to it), and the CLEVR layout
``<root>/scenes.json`` + ``<root>/questions.json`` (one file each, a ``split`` field per entry),
plus ``<root>/dataset.json`` (generation settings). ``task`` picks the view:
``rec``/``res`` -> refer layout, ``gref``/``gres`` -> gRefCOCO layout, ``vqa`` -> questions, and two
caption views composed from the refer layout's single-target expressions:

- ``phrase``: per image, its expressions in a random order (seeded by the image and record ids, so the
  same world always gives the same captions) cut into groups of 2-3, each group one caption joined by
  " and " ("the red cube and the ball left of the cylinder"), each expression a phrase with its box
  (an image with a single expression gives a one-phrase caption);
- ``retrieval``: the ``rec`` records themselves are the captions (one expression = one caption of its
  image; several captions per image, as in Flickr30k / COCO retrieval).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from langground.data.base import Collector, DatasetProtocol, RecordDataset, check_split, register_dataset
from langground.data.captions import caption_protocol, distinct_boxes, join_phrases
from langground.data.clevr import QuestionsDataset, read_questions
from langground.data.coco import read_json
from langground.data.grefcoco import open_grefcoco
from langground.data.images import image_size
from langground.data.protocols import SYNTH
from langground.data.refer import open_refer
from langground.errors import DataError
from langground.tasks import get_task
from langground.types import GroundingRecord, Phrase

SYNTH_TASKS = ("rec", "res", "gref", "gres", "vqa", "phrase", "retrieval", "recres")


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
    captions: str = "expressions",
) -> RecordDataset:
    """Open the synthetic world under ``root`` for ``task`` (rec/res/gref/gres/vqa/phrase/retrieval).

    ``captions`` (retrieval): ``"expressions"`` (the rec records) or ``"scene"`` (the scene-graph captions
    of ``captions_{split}.json``, ``synthetic/captions.py``)."""
    if task not in SYNTH_TASKS:
        raise DataError(f"unknown task {task!r} for synth; expected one of {', '.join(SYNTH_TASKS)}")
    if (root / "synth").is_dir() is False and (root / "questions.json").is_file() is False:
        raise DataError(
            f"{root}: not a synthetic world (expected {root / 'synth'} and {root / 'questions.json'})"
        )
    if captions not in ("expressions", "scene"):
        raise DataError(f"synth: captions={captions!r}; expected 'expressions' or 'scene'")
    spec = get_task(task)
    if spec.record_unit == "question":
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
    if spec.record_unit == "caption":
        refer = open_refer(
            root, split, **{**common, "task": "rec", "protocol": caption_protocol(protocol, task)}
        )
        if not spec.uses_phrases and captions == "scene":
            return open_synth_scene_captions(root, split, name, caption_protocol(protocol, task))
        if not spec.uses_phrases:  # retrieval: the single-target expressions are the captions
            refer.task = task
            return refer
        return SynthPhraseDataset(refer)
    # Generalized tasks (a no-target head) read the gRefCOCO layout; REC / RES the refer layout.
    return (
        open_grefcoco(root, split, **common)
        if "no_target" in spec.heads
        else open_refer(root, split, **common)
    )


class SynthPhraseDataset(RecordDataset):
    """Captions of 2-3 single-target expressions of one image, each a phrase (``task="phrase"``)."""

    layout = "synth"

    def __init__(self, base: RecordDataset, sep: str = " and ") -> None:
        super().__init__(
            root=base.root,
            name=base.name,
            split=base.split,
            protocol=base.protocol,
            image_dirs=base.image_dirs,
            task="phrase",
            files=base.files,
        )
        self.base, self.sep = base, sep
        self.split_names = list(base.splits)
        self.index_problems.extend(base.index_problems)
        by_image: dict[Any, list[tuple[str, int]]] = {}
        for i in range(len(base)):
            r = base.get(i, resolve_size=False)
            by_image.setdefault((r.split, r.image_id), []).append((r.sample_id, i))
        self.captions: list[list[int]] = []
        for (_, image_id), members in by_image.items():
            members.sort()
            self.captions.extend(
                compose_groups([i for _, i in members], [sid for sid, _ in members], image_id)
            )

    def __len__(self) -> int:
        return len(self.captions)

    def _record(self, i: int, resolve_size: bool) -> GroundingRecord:
        parts = [self.base.get(j, resolve_size=resolve_size) for j in self.captions[i]]
        text, spans = join_phrases([r.text for r in parts], self.sep)
        phrases = tuple(
            Phrase(span=span, boxes=r.boxes.copy(), phrase_id=r.sample_id, family=r.family)
            for r, span in zip(parts, spans, strict=True)
        )
        first = parts[0]
        return GroundingRecord(
            sample_id="+".join(r.sample_id for r in parts),
            image_id=first.image_id,
            image_path=first.image_path,
            image_size=first.image_size,
            text=text,
            boxes=distinct_boxes(phrases),
            dataset=first.dataset,
            split=first.split,
            family=f"{len(parts)}_phrases",
            phrases=phrases,
            meta={"expressions": [r.sample_id for r in parts]},
        )


def compose_groups(items: list[int], ids: list[str], image_id: Any) -> list[list[int]]:
    """``items`` (one image's expressions, ``ids`` their sample ids) shuffled and cut into groups of 2-3.

    The order and the group sizes are drawn from a generator seeded by the image id and the sample ids:
    the same world gives the same captions on every machine and every run.
    """
    seed = zlib.crc32(f"{image_id}:{','.join(ids)}".encode())
    rng = np.random.default_rng(seed)
    order = [items[k] for k in rng.permutation(len(items))]
    groups: list[list[int]] = []
    while order:
        left = len(order)
        # Never leave one expression alone: 4 -> 2 + 2, 5 -> 2 + 3 or 3 + 2.
        take = left if left <= 3 else 2 if left == 4 else int(rng.integers(2, 4))
        groups.append(order[:take])
        order = order[take:]
    return groups


def open_synth_scene_captions(root: Path, split: str, name: str, protocol: DatasetProtocol) -> RecordDataset:
    """The scene-graph captions (``captions_{split}.json``, COCO captions layout) as retrieval records."""
    from langground.data.karpathy import open_coco_captions
    from langground.data.synthetic.captions import captions_file
    from langground.data.synthetic.config import SPLITS

    files = {s: root / captions_file(s) for s in SPLITS if (root / captions_file(s)).is_file()}
    if not files:
        raise DataError(
            f"{root}: no {captions_file('<split>')} (generate the world again for scene captions)"
        )
    return open_coco_captions(
        files, split, root=root, image_dir=root / "images", name=name, protocol=protocol
    )


def read_dataset_info(root: Path) -> dict[str, Any] | None:
    path = root / "dataset.json"
    return read_json(path) if path.is_file() else None


register_dataset(
    "synth",
    layout="synth",
    opener=open_synth,
    detect=lambda root: (root / "synth").is_dir() or (root / "dataset.json").is_file(),
    description="langground's synthetic referring world (task=rec|res|gref|gres|vqa|phrase|retrieval)",
    protocol=SYNTH,
)
