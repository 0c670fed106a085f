"""The synthetic world end to end, on tiny worlds (12 images at 160x120): files, layouts, guarantees."""

from __future__ import annotations

import filecmp
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from langground.data.synthetic import (
    SynthConfig,
    execute_program,
    generate_world,
    run_program,
    without_node,
)
from langground.data.synthetic.programs import removable_nodes
from langground.data.synthetic.spec import COGENT, COLORS, SHAPE_CATEGORY_ID
from langground.errors import DataError, LanggroundError

SMALL = dict(images=12, seed=7, size=(160, 120))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("synth") / "world", SynthConfig(**SMALL), workers=1)


def _load(world: Path) -> dict:
    return {
        "instances": json.loads((world / "synth" / "instances.json").read_text()),
        "grefs": json.loads((world / "synth" / "grefs(synth).json").read_text()),
        "refs": pickle.loads((world / "synth" / "refs(synth).p").read_bytes()),
        "scenes": json.loads((world / "scenes.json").read_text()),
        "questions": json.loads((world / "questions.json").read_text()),
        "manifest": json.loads((world / "dataset.json").read_text()),
    }


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_seed_same_bytes_any_worker_count(world: Path, tmp_path: Path) -> None:
    again = generate_world(tmp_path / "w2", SynthConfig(**SMALL), workers=2)
    files = _files(world)
    assert files == _files(again) and len(files) == 12 + 6 + 5  # images, annotations, captions_{split}.json
    match, mismatch, errors = filecmp.cmpfiles(world, again, files, shallow=False)
    assert not mismatch and not errors
    other = generate_world(tmp_path / "w3", SynthConfig(**{**SMALL, "seed": 8}), workers=1)
    assert (world / "scenes.json").read_bytes() != (other / "scenes.json").read_bytes()


def test_layouts_parse_and_ids_are_consistent(world: Path) -> None:
    d = _load(world)
    inst = d["instances"]
    assert {c["name"] for c in inst["categories"]} == {"cube", "sphere", "cylinder"}
    assert all(c["supercategory"] == "shape" for c in inst["categories"])
    img_ids = [im["id"] for im in inst["images"]]
    ann_ids = [a["id"] for a in inst["annotations"]]
    assert len(set(img_ids)) == len(img_ids) == 12 and len(set(ann_ids)) == len(ann_ids)
    for im in inst["images"]:
        assert (im["width"], im["height"]) == (160, 120)
        with Image.open(world / "images" / im["file_name"]) as pic:
            assert pic.mode == "RGB" and pic.size == (160, 120)
    scenes = d["scenes"]["scenes"]
    assert [s["image_index"] for s in scenes] == list(range(12))
    by_ann = {a["id"]: a for a in inst["annotations"]}
    for s in scenes:
        assert 3 <= len(s["objects"]) <= 10
        for o in s["objects"]:
            a = by_ann[o["ann_id"]]
            assert a["image_id"] == s["image_id"] and a["category_id"] == SHAPE_CATEGORY_ID[o["shape"]]
            assert o["bbox"] == a["bbox"] and len(o["pixel_coords"]) == 3
        assert set(s["relationships"]) == {"left", "right", "front", "behind"}
    # gRefCOCO: one ref per (image, target set); refer pickle: the single-target refs, same ids
    grefs = d["grefs"]
    keys = [(r["image_id"], tuple(r["ann_id"])) for r in grefs]
    assert len(keys) == len(set(keys))
    sent_ids = [s["sent_id"] for r in grefs for s in r["sentences"]]
    assert len(sent_ids) == len(set(sent_ids))
    for r in grefs:
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        for s in r["sentences"]:
            assert set(s) == {"sent_id", "sent", "raw", "tokens", "family", "program"}
            assert s["tokens"] == s["sent"].split()
        if r["no_target"]:
            assert r["ann_id"] == [-1] and r["category_id"] == [-1]
        else:
            assert -1 not in r["ann_id"]
            assert r["category_id"] == [by_ann[a]["category_id"] for a in r["ann_id"]]
    singles = {r["ref_id"]: r for r in grefs if not r["no_target"] and len(r["ann_id"]) == 1}
    assert {r["ref_id"] for r in d["refs"]} == set(singles)
    for r in d["refs"]:
        assert isinstance(r["ann_id"], int) and r["ann_id"] == singles[r["ref_id"]]["ann_id"][0]
        assert r["sentences"] == singles[r["ref_id"]]["sentences"] and "no_target" not in r
    assert (world / "synth" / "refs(synth).p").read_bytes()[:2] == b"\x80\x02"  # pickle protocol 2
    q = d["questions"]["questions"]
    assert [x["question_index"] for x in q] == list(range(len(q)))
    answers = {"yes", "no", *map(str, range(11)), *COLORS, "cube", "sphere", "cylinder", "small", "large"}
    assert all(x["answer"] in answers | {"rubber", "metal"} for x in q)
    assert {x["question_family"] for x in q} <= {
        "exist", "count", "query_color", "query_shape", "query_size", "query_material", "compare_count",
    }  # fmt: skip
    m = d["manifest"]
    assert m["name"] == "synth" and m["seed"] == 7 and m["config"]["size"] == [160, 120]
    assert sum(c["images"] for c in m["counts"].values()) == 12


def test_masks_boxes_areas_and_rle(world: Path) -> None:
    d = _load(world)
    images = {im["id"]: im for im in d["instances"]["images"]}
    per_image: dict[int, np.ndarray] = {}
    for a in d["instances"]["annotations"]:
        rle = a["segmentation"]
        assert rle["size"] == [120, 160] and isinstance(rle["counts"], str)
        m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert m.shape == (120, 160) and int(m.sum()) == a["area"] > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == a["area"]
        # visible masks of one image never overlap
        acc = per_image.setdefault(a["image_id"], np.zeros((120, 160), np.uint8))
        assert not (acc & m).any()
        acc |= m
    # Pixel-exact: the floor is neutral grey, so every coloured pixel belongs to some object's visible
    # mask, and the mask of a coloured object is (almost) all coloured pixels.
    shapes = {(s["image_id"], o["ann_id"]): o["color"] for s in d["scenes"]["scenes"] for o in s["objects"]}
    for a in d["instances"]["annotations"]:
        pic = np.asarray(Image.open(world / "images" / images[a["image_id"]]["file_name"])).astype(int)
        coloured = (pic[..., 0] != pic[..., 1]) | (pic[..., 1] != pic[..., 2])
        assert not (coloured & ~per_image[a["image_id"]].astype(bool)).any()
        if shapes[(a["image_id"], a["id"])] != "gray":
            m = mask_utils.decode({"size": [120, 160], "counts": a["segmentation"]["counts"].encode()})
            assert coloured[m.astype(bool)].mean() > 0.8


def test_every_expression_re_executes_to_its_targets_with_no_redundant_word(world: Path) -> None:
    d = _load(world)
    scenes = {s["image_id"]: s for s in d["scenes"]["scenes"]}
    n_single = 0
    for r in d["grefs"]:
        scene = scenes[r["image_id"]]
        ann_to_obj = {o["ann_id"]: i for i, o in enumerate(scene["objects"])}
        want = [] if r["no_target"] else sorted(ann_to_obj[a] for a in r["ann_id"])
        for s in r["sentences"]:
            prog = s["program"]
            result = execute_program(prog, scene)
            assert result == want, s["sent"]
            if s["family"] in ("attribute", "relation", "ordinal", "same_attribute"):
                assert len(result) == 1
                n_single += 1
            if s["family"] == "multi":
                assert len(result) >= 2
            # Removing any word-carrying node must change the outcome (a failed unique is its own outcome).
            outcome = run_program(prog, scene)
            for k in removable_nodes(prog):
                assert run_program(without_node(prog, k), scene) != outcome, (s["sent"], k)
    assert n_single > 0


def test_expression_count_families_and_no_target_rate(world: Path) -> None:
    d = _load(world)
    sents = [s for r in d["grefs"] for s in r["sentences"]]
    assert len(sents) / 12 >= 5
    fams = {s["family"] for s in sents}
    assert {"attribute", "relation", "ordinal", "same_attribute", "multi"} <= fams
    no_target = [s for r in d["grefs"] if r["no_target"] for s in r["sentences"]]
    assert {s["family"] for s in no_target} <= {"absent", "false_relation"}
    assert all(s["family"] not in ("absent", "false_relation") for r in d["grefs"] if not r["no_target"] for s in r["sentences"])  # fmt: skip
    assert len({s["sent"] for r in d["grefs"] for s in r["sentences"] if True}) >= len(sents) - 12


def test_relations_respect_the_margin(world: Path) -> None:
    d = _load(world)
    mx = d["scenes"]["info"]["relation_margin_x_px"]
    mz = d["scenes"]["info"]["relation_margin_depth"]
    for s in d["scenes"]["scenes"]:
        objs, rel = s["objects"], s["relationships"]
        for i, oi in enumerate(objs):
            for j, oj in enumerate(objs):
                if i == j:
                    continue
                dx = oj["pixel_coords"][0] - oi["pixel_coords"][0]
                dz = oj["3d_coords"][2] - oi["3d_coords"][2]
                assert (j in rel["left"][i]) == (dx < -mx) and (j in rel["right"][i]) == (dx > mx)
                assert (j in rel["front"][i]) == (dz < -mz) and (j in rel["behind"][i]) == (dz > mz)


def test_cogent_conditions_and_crowded_test_split(world: Path) -> None:
    scenes = _load(world)["scenes"]["scenes"]
    splits = {s["split"] for s in scenes}
    assert splits == {"train", "val", "testA", "testB", "cogentB"}
    for s in scenes:
        cond = "B" if s["split"] == "cogentB" else "A"
        assert s["cogent_condition"] == cond
        for o in s["objects"]:
            assert o["color"] in COGENT[cond][o["shape"]]
        if s["split"] == "testB":
            assert len(s["objects"]) >= 8


def test_no_cogent_has_no_cogentB(tmp_path: Path) -> None:
    cfg = SynthConfig(
        images=20, seed=1, size=(160, 120), cogent=False, expressions_per_image=2, questions_per_image=1
    )
    assert "cogentB" not in cfg.split_counts() and sum(cfg.split_counts().values()) == 20
    out = generate_world(tmp_path / "w", cfg, workers=1)
    scenes = json.loads((out / "scenes.json").read_text())["scenes"]
    assert {s["split"] for s in scenes} <= {"train", "val", "testA", "testB"}
    assert all(s["cogent_condition"] is None for s in scenes)


def test_atomic_write_refuses_existing_targets(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        generate_world(full, SynthConfig(images=2, size=(160, 120)), workers=1)
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        generate_world(a_file, SynthConfig(images=2, size=(160, 120)), workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]  # no temp dir left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        generate_world(empty, SynthConfig(images=2, size=(160, 120)), workers=1) / "dataset.json"
    ).exists()


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    def boom(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_world(tmp_path / "w", SynthConfig(images=3, size=(160, 120)), workers=1, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_progress_callback_and_bad_config() -> None:
    calls: list[tuple[int, int]] = []
    with pytest.raises(LanggroundError, match="split_fractions"):
        SynthConfig(split_fractions={"train": 0.5})
    with pytest.raises(LanggroundError, match="size"):
        SynthConfig(size=(10, 10))
    cfg = SynthConfig(images=3, size=(160, 120))
    assert sum(cfg.split_counts().values()) == 3
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        generate_world(Path(d) / "w", cfg, workers=1, progress=lambda a, b: calls.append((a, b)))
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
