"""Scene-graph captions: whole-scene descriptions of every synthetic image, for image-text retrieval and
box-free pre-training (SLAN), written in the COCO captions layout.

Each caption walks a few objects of the scene graph and links each to the next by a stored relation
("a large red metal cube behind a small cyan rubber sphere, and a small gray cylinder left of a ...").
Objects are named by all four attributes (with the world's synonyms), so captions tell scenes apart;
relations come from ``relationships`` (CLEVR layout, with the world's margins), so they are always true.

Files: ``<root>/captions_{split}.json`` per split, COCO captions layout (``images`` with ``id``,
``file_name``, ``width``, ``height``; ``annotations`` with ``id``, ``image_id``, ``caption``), plus, per
annotation, ``objects``: the COCO annotation ids of the objects it mentions, in caption order.
Captions are a pure function of the world config: image ``i`` draws from child 4 of its seed sequence
(children 0-3 are the scene, render, expression and question streams).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from langground.data.synthetic.config import SPLITS, SynthConfig
from langground.data.synthetic.spec import RELATION_WORDS, SYNONYMS

CAPTIONS_PER_IMAGE = 4
MAX_OBJECTS_PER_CAPTION = 3
_CAPTION_STREAM = 4  # child of the image's SeedSequence (0-3: scene, render, expressions, questions)


def captions_file(split: str) -> str:
    return f"captions_{split}.json"


def caption_rng(config: SynthConfig, index: int) -> np.random.Generator:
    return np.random.default_rng(config.image_seed(index).spawn(_CAPTION_STREAM + 1)[_CAPTION_STREAM])


def _word(value: str, rng: np.random.Generator) -> str:
    options = SYNONYMS.get(value, (value,))
    return options[int(rng.integers(len(options)))]


def describe(obj: dict[str, Any], rng: np.random.Generator) -> str:
    """``"a large red metal cube"`` (size, colour, material, shape; synonyms drawn from ``rng``)."""
    words = [_word(obj["size"], rng), obj["color"], _word(obj["material"], rng), _word(obj["shape"], rng)]
    return "a " + " ".join(words)


def relation_between(relationships: dict[str, list[list[int]]], a: int, b: int) -> list[str]:
    """Relations ``rel`` with "a is ``rel`` of b" stored in the scene graph (CLEVR: ``rel[b]`` lists a)."""
    return [rel for rel in RELATION_WORDS if a in relationships.get(rel, [[]] * (b + 1))[b]]


def scene_caption(
    objects: Sequence[dict[str, Any]], relationships: dict[str, list[list[int]]], rng: np.random.Generator
) -> tuple[str, list[int]]:
    """One caption of 2..3 objects (1 in a one-object scene) chained by true relations, and the object indices it mentions."""
    n = len(objects)
    order = [int(i) for i in rng.permutation(n)]
    length = int(rng.integers(min(2, n), min(MAX_OBJECTS_PER_CAPTION, n) + 1))  # 2-3 objects when there are
    chosen = order[:length]
    clauses: list[str] = []
    for k in range(0, len(chosen), 2):
        a = chosen[k]
        if k + 1 < len(chosen):
            b = chosen[k + 1]
            rels = relation_between(relationships, a, b)
            if rels:
                rel = rels[int(rng.integers(len(rels)))]
                words = RELATION_WORDS[rel]
                clauses.append(
                    f"{describe(objects[a], rng)} {words[int(rng.integers(len(words)))]} "
                    f"{describe(objects[b], rng)}"
                )
                continue
            clauses.append(f"{describe(objects[a], rng)} and {describe(objects[b], rng)}")
            continue
        clauses.append(describe(objects[a], rng))
    return ", and ".join(clauses), chosen


def image_captions(
    objects: Sequence[dict[str, Any]],
    relationships: dict[str, list[list[int]]],
    rng: np.random.Generator,
    count: int = CAPTIONS_PER_IMAGE,
) -> list[tuple[str, list[int]]]:
    """``count`` distinct captions of one scene when it has that many (tries a few times, keeps distinct)."""
    out: dict[str, list[int]] = {}
    for _ in range(count * 4):
        text, chosen = scene_caption(objects, relationships, rng)
        out.setdefault(text, chosen)
        if len(out) == count:
            break
    return list(out.items())


def build_captions(results: Sequence[dict[str, Any]], config: SynthConfig) -> dict[str, dict[str, Any]]:
    """Per split, the COCO-captions document of every image in ``results`` (``build_image`` outputs,
    image order); annotation ids count from 1 over the whole world, COCO annotation ids of objects count
    as the writer assigns them (from 1 in image order)."""
    w, h = config.size
    docs: dict[str, dict[str, Any]] = {}
    cap_id = ann_base = 0
    for r in results:
        idx, split = r["index"], r["split"]
        image_id = idx + 1
        doc = docs.setdefault(
            split, {"info": {"name": "synth", "split": split}, "images": [], "annotations": []}
        )
        doc["images"].append({"id": image_id, "file_name": f"synth_{idx:06d}.png", "width": w, "height": h})
        rng = caption_rng(config, idx)
        for text, chosen in image_captions(r["objects"], r["relationships"], rng):
            cap_id += 1
            doc["annotations"].append(
                {
                    "id": cap_id,
                    "image_id": image_id,
                    "caption": text,
                    "objects": [ann_base + i + 1 for i in chosen],
                }
            )
        ann_base += len(r["objects"])
    return {s: docs[s] for s in SPLITS if s in docs}


def write_captions(out: Path, results: Sequence[dict[str, Any]], config: SynthConfig) -> None:
    """Write ``captions_{split}.json`` for every split into ``out`` (the world's root)."""
    for split, doc in build_captions(results, config).items():
        with open(Path(out) / captions_file(split), "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "CAPTIONS_PER_IMAGE",
    "build_captions",
    "caption_rng",
    "captions_file",
    "describe",
    "image_captions",
    "relation_between",
    "scene_caption",
    "write_captions",
]
