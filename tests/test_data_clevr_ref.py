"""CLEVR-Ref+ layout: ``scenes/clevr_ref+_{split}_scenes.json`` + ``refexps/clevr_ref+_{split}_refexps.json``.

``obj_mask`` holds, per object under 1-based string keys, comma-separated run lengths over the ROW-major
320x480 image starting with zeros; ``obj_bbox`` is xywh under the same keys. A refexp's referents are the
0-based ``_output`` of its program's last node, possibly several (OR of their masks, one box each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from langground.data import dataset_spec, open_dataset
from langground.data.stats import dataset_stats

H, W = 320, 480


def row_major_runs(m: np.ndarray) -> str:
    """The CLEVR-Ref+ encoding, by hand: runs over m.flatten() (row-major), the first run is zeros."""
    flat = m.flatten(order="C")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return ",".join(map(str, runs))


def obj_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


# object k (0-based) is stored under key str(k + 1)
MASKS = [obj_mask(10, 20, 100, 150), obj_mask(200, 260, 0, 40), obj_mask(15, 40, 140, 170)]  # 0 and 2 overlap
BBOXES = [[100, 10, 50, 10], [0, 200, 40, 60], [140, 15, 30, 25]]


def node(fn: str, inputs: list[int], side: list[str], out) -> dict:
    return {"type": fn, "inputs": inputs, "side_inputs": side, "_output": out}


def write_split(root: Path, split: str) -> None:
    scene = {
        "image_index": 0,
        "image_filename": f"CLEVR_{split}_000000.png",
        "split": split,
        "objects": [{"color": c, "shape": "cube", "3d_coords": [0, 0, 0]} for c in ("red", "blue", "red")],
        "relationships": {"left": [[], [0], [0, 1]], "right": [[1, 2], [2], []]},
        "directions": {"left": [-1, 0, 0]},
        "obj_mask": {str(k + 1): row_major_runs(m) for k, m in enumerate(MASKS)},
        "obj_bbox": {str(k + 1): b for k, b in enumerate(BBOXES)},
    }
    scene1 = {**scene, "image_index": 1, "image_filename": f"CLEVR_{split}_000001.png"}
    (root / "scenes").mkdir(exist_ok=True)
    (root / "scenes" / f"clevr_ref+_{split}_scenes.json").write_text(
        json.dumps({"info": {"split": split}, "scenes": [scene, scene1]})
    )
    refexps = [
        {
            "split": split,
            "image_filename": f"CLEVR_{split}_000000.png",
            "image_index": 0,
            "refexp": "the red things",
            "program": [node("scene", [], [], [0, 1, 2]), node("filter_color", [0], ["red"], [0, 2])],
            "refexp_index": 0,
            "template_filename": "zero_hop.json",
        },
        {
            "split": split,
            "image_filename": f"CLEVR_{split}_000001.png",
            "image_index": 1,
            "refexp": "the blue cube",
            "program": [
                node("scene", [], [], [0, 1, 2]),
                node("filter_color", [0], ["blue"], [1]),
                node("filter_shape", [1], ["cube"], [1]),
            ],
            "refexp_index": 1,
            "template_filename": "one_hop.json",
        },
    ]
    (root / "refexps").mkdir(exist_ok=True)
    (root / "refexps" / f"clevr_ref+_{split}_refexps.json").write_text(
        json.dumps({"info": {"split": split}, "refexps": refexps})
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clevr_ref")
    write_split(root, "val")
    write_split(root, "train")
    return root


def test_multi_referent_boxes_from_1_based_keys_and_or_mask(root):
    ds = open_dataset(root, "clevr-ref+", "val")
    assert ds.protocol == dataset_spec("clevr-ref+").protocol and ds.task == "res"
    r = ds[0]
    assert (r.text, r.sample_id, r.split, r.image_id) == ("the red things", "0", "val", 0)
    assert r.ann_ids == (0, 2) and r.meta["object_indices"] == (0, 2) and not r.no_target
    np.testing.assert_array_equal(r.boxes, [[100, 10, 150, 20], [140, 15, 170, 40]])
    m = r.load_mask()
    assert m.shape == (H, W) and m.dtype == np.uint8 and m.max() == 1
    np.testing.assert_array_equal(m, MASKS[0] | MASKS[2])
    assert r.image_size == (H, W) and r.image_path.endswith("images/val/CLEVR_val_000000.png")
    assert r.family == "zero_hop"


def test_single_referent_row_major_mask_and_program(root):
    r = open_dataset(root, "clevr-ref+", "val")[1]
    np.testing.assert_array_equal(r.boxes, [[0, 200, 40, 260]])
    np.testing.assert_array_equal(r.load_mask(), MASKS[1])  # row-major: rows 200..260, columns 0..40
    assert r.program == [
        {"type": "scene", "inputs": [], "side_inputs": []},
        {"type": "filter_color", "inputs": [0], "side_inputs": ["blue"]},
        {"type": "filter_shape", "inputs": [1], "side_inputs": ["cube"]},
    ]
    assert r.image_path.endswith("CLEVR_val_000001.png")


def test_all_splits_and_stats(root):
    ds = open_dataset(root, "clevr-ref+", "all")
    assert ds.splits == ("train", "val") and len(ds) == 4
    st = dataset_stats(ds)
    assert st["splits"]["val"]["multi_target"] == 1 and st["splits"]["val"]["boxes"] == 3
    assert st["families"] == {"one_hop": {"train": 1, "val": 1}, "zero_hop": {"train": 1, "val": 1}}
