"""``generate_world``: render every image in parallel and write the dataset in the real on-disk formats.

Layout of the output directory (built in a temporary sibling directory, then renamed into place):

- ``images/synth_000000.png`` ... RGB PNGs;
- ``synth/instances.json``: COCO (visible-mask RLE from pycocotools, ``area`` = mask pixels, ``bbox``
  = tight xywh box of the visible mask, categories cube / sphere / cylinder);
- ``synth/grefs(synth).json``: gRefCOCO layout, one ref per (image, target set), all expressions;
  no-target refs have ``ann_id`` / ``category_id`` ``[-1]`` and ``no_target`` true;
- ``synth/refs(synth).p``: refer-toolkit layout (pickle protocol 2), the single-target refs only;
- ``scenes.json`` / ``questions.json``: CLEVR layouts;
- ``captions_{split}.json``: COCO captions layout, scene-graph descriptions (``synthetic/captions.py``);
- ``dataset.json``: manifest (name, format version, seed, config, counts).

Ids: image ids are ``index + 1``; annotation, ref and sentence ids count from 1 in image order;
CLEVR ``image_index`` / ``question_index`` count from 0. Images are independent (each has its own
seed), so the bytes written do not depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from langground.data.synthetic.captions import write_captions
from langground.data.synthetic.config import SPLITS, SynthConfig
from langground.data.synthetic.expressions import generate_expressions
from langground.data.synthetic.questions import generate_questions
from langground.data.synthetic.render import render_scene
from langground.data.synthetic.scene import sample_scene
from langground.data.synthetic.spec import SHAPE_CATEGORY_ID
from langground.errors import DataError

FORMAT_VERSION = 1
DATASET_NAME = "synth"
IMAGE_PATTERN = "synth_{:06d}.png"

ProgressFn = Callable[[int, int], None]


def image_file(index: int) -> str:
    return IMAGE_PATTERN.format(index)


def build_image(index: int, split: str, config: SynthConfig, images_dir: Path | None) -> dict[str, Any]:
    """Everything about image ``index``: its scene, masks, expressions and questions (ids not assigned).

    Writes the PNG into ``images_dir`` when given. Pure function of (config, index, split).
    """
    ss = config.image_seed(index)
    s_scene, s_render, s_expr, s_quest = (np.random.default_rng(s) for s in ss.spawn(4))
    scene = sample_scene(s_scene, config, config.condition(split), split)
    rendered = render_scene(scene, config.size, s_render)
    masks = rendered.masks
    w, h = config.size
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
    areas = masks.sum(axis=(1, 2))
    objects = []
    for i, o in enumerate(scene.objects):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        x0, y0 = int(xs[0]), int(ys[0])
        objects.append(
            {
                **o.attrs(),
                "3d_coords": [round(c, 4) for c in o.coords_3d],
                "rotation": round(o.rotation, 3),
                "pixel_coords": [
                    round(o.pixel_coords[0], 3),
                    round(o.pixel_coords[1], 3),
                    round(o.pixel_coords[2], 4),
                ],
                "bbox": [x0, y0, int(xs[-1]) - x0 + 1, int(ys[-1]) - y0 + 1],
                "area": int(areas[i]),
                "rle": {"size": [h, w], "counts": rles[i]["counts"].decode("ascii")},
            }
        )
    exprs = generate_expressions(scene, s_expr, config)
    quests = generate_questions(scene, s_quest, config)
    if images_dir is not None:
        Image.fromarray(rendered.image, "RGB").save(
            images_dir / image_file(index), format="PNG", compress_level=config.png_compress_level
        )
    return {
        "index": index,
        "split": split,
        "condition": scene.condition,
        "objects": objects,
        "relationships": scene.relationships,
        "expressions": [
            {"family": e.family, "text": e.text, "program": e.program, "targets": e.targets} for e in exprs
        ],
        "questions": [
            {"family": q.family, "question": q.question, "program": q.program, "answer": q.answer}
            for q in quests
        ],
    }


# --- parallel generation ------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(config: SynthConfig, images_dir: str) -> None:
    _WORKER["config"] = config
    _WORKER["images_dir"] = Path(images_dir)


def _work(job: tuple[int, str]) -> dict[str, Any]:
    return build_image(job[0], job[1], _WORKER["config"], _WORKER["images_dir"])


def _context() -> mp.context.BaseContext:
    # fork is cheapest (the parent already imported everything) but unsafe once threads run; the output
    # does not depend on the choice.
    if "fork" in mp.get_all_start_methods() and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- writing --------------------------------------------------------------------------------------------


def check_output_dir(out: str | Path) -> None:
    """Raise ``DataError`` unless ``out`` is absent or an empty directory (checked again before renaming)."""
    _check_target(Path(out))


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; expected a new or empty directory for the synthetic world")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: directory is not empty; expected a new or empty directory")


def _dump_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"), ensure_ascii=False)


def _assemble(results: list[dict[str, Any]], config: SynthConfig) -> dict[str, Any]:
    """Assign dataset-wide ids and lay the per-image results out in the target formats."""
    w, h = config.size
    images, anns, grefs, refs, scenes, questions = [], [], [], [], [], []
    ann_id = ref_id = sent_id = 0
    counts: dict[str, Counter] = {}
    families: Counter = Counter()
    q_families: Counter = Counter()
    for r in results:
        idx, split = r["index"], r["split"]
        image_id, fname = idx + 1, image_file(idx)
        c = counts.setdefault(split, Counter())
        c["images"] += 1
        c["objects"] += len(r["objects"])
        images.append({"id": image_id, "file_name": fname, "width": w, "height": h})
        obj_ann, obj_cat = [], []
        scene_objects = []
        for o in r["objects"]:
            ann_id += 1
            cat = SHAPE_CATEGORY_ID[o["shape"]]
            obj_ann.append(ann_id)
            obj_cat.append(cat)
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": o["rle"],
                    "area": o["area"],
                    "bbox": [float(v) for v in o["bbox"]],
                    "iscrowd": 0,
                }
            )
            scene_objects.append({k: v for k, v in o.items() if k != "rle"} | {"ann_id": ann_id})
        scenes.append(
            {
                "image_index": idx,
                "image_id": image_id,
                "image_filename": fname,
                "split": split,
                "cogent_condition": r["condition"],
                "width": w,
                "height": h,
                "objects": scene_objects,
                "relationships": r["relationships"],
            }
        )
        # One ref per target set, in order of first appearance (the no-target set is the empty tuple).
        groups: dict[tuple[int, ...], list[dict[str, Any]]] = {}
        for e in r["expressions"]:
            groups.setdefault(tuple(sorted(e["targets"])), []).append(e)
            families[e["family"]] += 1
        for targets, exprs in groups.items():
            ref_id += 1
            sentences = []
            for e in exprs:
                sent_id += 1
                sentences.append(
                    {
                        "sent_id": sent_id,
                        "sent": e["text"],
                        "raw": e["text"],
                        "tokens": e["text"].split(),
                        "family": e["family"],
                        "program": e["program"],
                    }
                )
            no_target = not targets
            gref = {
                "ref_id": ref_id,
                "image_id": image_id,
                "file_name": fname,
                "split": split,
                "ann_id": [-1] if no_target else [obj_ann[t] for t in targets],
                "category_id": [-1] if no_target else [obj_cat[t] for t in targets],
                "no_target": no_target,
                "sent_ids": [s["sent_id"] for s in sentences],
                "sentences": sentences,
            }
            grefs.append(gref)
            c["refs"] += 1
            c["expressions"] += len(sentences)
            c["no_target_expressions"] += len(sentences) if no_target else 0
            c["multi_target_expressions"] += len(sentences) if len(targets) > 1 else 0
            if len(targets) == 1:
                refs.append({**gref, "ann_id": gref["ann_id"][0], "category_id": gref["category_id"][0]})
                refs[-1].pop("no_target")
        for q in r["questions"]:
            questions.append(
                {
                    "question_index": len(questions),
                    "image_index": idx,
                    "image_filename": fname,
                    "split": split,
                    "question": q["question"],
                    "program": q["program"],
                    "answer": q["answer"],
                    "question_family": q["family"],
                }
            )
            q_families[q["family"]] += 1
            c["questions"] += 1
    info = {"name": DATASET_NAME, "version": FORMAT_VERSION, "seed": config.seed}
    instances = {
        "info": info,
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in SHAPE_CATEGORY_ID.items()],
    }
    margins = {
        "relation_margin_x_px": config.relation_margin_x * w,
        "relation_margin_depth": config.relation_margin_depth,
    }
    manifest = {
        "name": DATASET_NAME,
        "format_version": FORMAT_VERSION,
        "seed": config.seed,
        "config": config.to_dict(),
        "counts": {s: dict(counts[s]) for s in SPLITS if s in counts},
        "expression_families": dict(sorted(families.items())),
        "question_families": dict(sorted(q_families.items())),
        "relation_margins": margins,
    }
    return {
        "instances": instances,
        "grefs": grefs,
        "refs": refs,
        "scenes": {"info": {**info, **margins, "split": "all"}, "scenes": scenes},
        "questions": {"info": {**info, "split": "all"}, "questions": questions},
        "manifest": manifest,
    }


def generate_world(
    out_dir: str | Path,
    config: SynthConfig | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Generate the synthetic world described by ``config`` into ``out_dir`` (new or empty) and return it.

    ``workers``: processes (default: every core this process may use; 1 = in this process).
    ``progress(done, total)`` is called after each image. The directory appears complete or not at all.
    """
    config = SynthConfig() if config is None else config
    config.validate()
    out = Path(out_dir)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        images_dir = tmp / "images"
        images_dir.mkdir()
        (tmp / DATASET_NAME).mkdir()
        jobs = list(enumerate(config.split_assignment()))
        total = len(jobs)
        n_workers = max(1, min(default_workers() if workers is None else int(workers), total))
        results: list[dict[str, Any]] = []
        if progress is not None:
            progress(0, total)
        if n_workers == 1:
            for i, split in jobs:
                results.append(build_image(i, split, config, images_dir))
                if progress is not None:
                    progress(len(results), total)
        else:
            chunk = max(1, min(16, total // (n_workers * 8)))
            with _context().Pool(n_workers, _init_worker, (config, str(images_dir))) as pool:
                for res in pool.imap(_work, jobs, chunksize=chunk):
                    results.append(res)
                    if progress is not None:
                        progress(len(results), total)
        data = _assemble(results, config)
        _dump_json(tmp / DATASET_NAME / "instances.json", data["instances"])
        _dump_json(tmp / DATASET_NAME / f"grefs({DATASET_NAME}).json", data["grefs"])
        with open(tmp / DATASET_NAME / f"refs({DATASET_NAME}).p", "wb") as f:
            # Through JSON first: pickle's memo depends on object identity (shared vs copied strings),
            # which differs between in-process and pooled results; this makes the bytes canonical.
            pickle.dump(json.loads(json.dumps(data["refs"])), f, protocol=2)
        _dump_json(tmp / "scenes.json", data["scenes"])
        _dump_json(tmp / "questions.json", data["questions"])
        write_captions(tmp, results, config)  # captions_{split}.json: scene-graph captions (retrieval)
        with open(tmp / "dataset.json", "w", encoding="utf-8") as f:
            json.dump(data["manifest"], f, indent=2)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        _check_target(out)  # nothing appeared meanwhile
        if out.is_dir():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
