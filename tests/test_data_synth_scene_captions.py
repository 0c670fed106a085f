"""The synthetic world's scene-graph captions: true to the scene graph, written in the COCO captions
layout with the world, deterministic, and served as retrieval records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from langground.data import open_dataset
from langground.data.synthetic import SynthConfig, generate_world
from langground.data.synthetic.captions import describe, relation_between, scene_caption
from langground.data.synthetic.spec import RELATION_WORDS, SYNONYMS
from langground.errors import DataError

OBJECTS = [
    {"shape": "cube", "color": "red", "size": "large", "material": "metal"},
    {"shape": "sphere", "color": "cyan", "size": "small", "material": "rubber"},
]
# CLEVR layout: relationships[rel][i] = objects that are rel of i. Object 0 is behind and left of object 1.
RELS = {"left": [[], [0]], "right": [[1], []], "front": [[1], []], "behind": [[], [0]]}


def test_a_caption_names_both_objects_and_a_relation_the_scene_graph_stores():
    assert relation_between(RELS, 0, 1) == ["left", "behind"]
    assert relation_between(RELS, 1, 0) == ["right", "front"]
    for seed in range(20):
        text, chosen = scene_caption(OBJECTS, RELS, np.random.default_rng(seed))
        assert sorted(chosen) == [0, 1]
        a, b = chosen
        words = {w for rel in relation_between(RELS, a, b) for w in RELATION_WORDS[rel]}
        assert any(f" {w} a " in text for w in words), text
        wrong = {w for rel in relation_between(RELS, b, a) for w in RELATION_WORDS[rel]}
        assert not any(f" {w} a " in text for w in wrong - words), text
        for o in OBJECTS:
            assert any(s in text for s in SYNONYMS[o["shape"]]) and o["color"] in text


def test_describe_uses_all_four_attributes():
    text = describe(OBJECTS[0], np.random.default_rng(0))
    assert text.startswith("a ") and text.split()[2] == "red" and len(text.split()) == 5


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(
        tmp_path_factory.mktemp("w") / "synth", SynthConfig(images=20, size=(96, 72), seed=3), workers=1
    )


def test_world_writes_coco_captions_true_to_its_scenes(world):
    scenes = {s["image_id"]: s for s in json.loads((world / "scenes.json").read_text())["scenes"]}
    instances = json.loads((world / "synth" / "instances.json").read_text())
    ann_image = {a["id"]: a["image_id"] for a in instances["annotations"]}
    seen_images = set()
    for split in ("train", "val", "testA", "testB", "cogentB"):
        path = world / f"captions_{split}.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        assert {"images", "annotations"} <= set(doc)
        ids = {im["id"] for im in doc["images"]}
        assert all(scenes[i]["split"] == split for i in ids)
        seen_images |= ids
        for ann in doc["annotations"]:
            assert ann["image_id"] in ids and ann["caption"].startswith("a ")
            assert all(ann_image[o] == ann["image_id"] for o in ann["objects"])  # mentions its own objects
            objs = {o["ann_id"]: o for o in scenes[ann["image_id"]]["objects"]}
            for o in ann["objects"]:
                assert objs[o]["color"] in ann["caption"]
        per_image = [sum(a["image_id"] == i for a in doc["annotations"]) for i in ids]
        assert min(per_image) >= 1 and max(per_image) <= 4
        for i in ids:  # an image's captions are distinct
            caps = [a["caption"] for a in doc["annotations"] if a["image_id"] == i]
            assert len(set(caps)) == len(caps)
    assert seen_images == set(scenes)


def test_captions_do_not_depend_on_the_worker_count(world, tmp_path):
    again = generate_world(tmp_path / "again", SynthConfig(images=20, size=(96, 72), seed=3), workers=2)
    for path in world.glob("captions_*.json"):
        assert (again / path.name).read_bytes() == path.read_bytes()


def test_scene_captions_are_served_as_retrieval_records(world):
    ds = open_dataset(world, "synth", "train", task="retrieval", captions="scene")
    doc = json.loads((world / "captions_train.json").read_text())
    assert ds.task == "retrieval" and [r.text for r in ds] == [a["caption"] for a in doc["annotations"]]
    r = ds[0]
    assert Path(r.image_path).is_file() and r.image_size == (72, 96) and r.boxes.shape == (0, 4)
    same = open_dataset(world, "synth-captions", "train")
    assert [x.sample_id for x in same] == [x.sample_id for x in ds]
    assert ds.protocol.metrics["retrieval"][-1] == "retrieval/rsum"
    # the expression view stays the default
    assert len(open_dataset(world, "synth", "train", task="retrieval")) != len(ds)
    with pytest.raises(DataError, match="captions='objects'; expected 'expressions' or 'scene'"):
        open_dataset(world, "synth", "train", task="retrieval", captions="objects")
