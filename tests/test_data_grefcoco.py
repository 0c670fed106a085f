"""gRefCOCO layout: ``grefcoco/grefs(unc).json`` + ``grefcoco/instances.json`` (ReLA's loader).

``ann_id`` / ``category_id`` are lists: multi-target refs give one box per object and the OR of their
masks; no-target refs are ``[-1]`` with ``no_target: true`` and give no box and an empty mask; refs without
sentences are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langground.data import dataset_spec, open_dataset
from langground.data.stats import dataset_stats

H, W = 36, 50


def rect(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def box_mask(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 1
    return m


def make_grefcoco(root: Path) -> Path:
    d = root / "grefcoco"
    d.mkdir(parents=True)
    inst = {
        "images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "height": H, "width": W}],
        "annotations": [
            # person: two polygons that overlap (OR) -> one object
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [2, 3, 18, 17], "area": 0.0,
             "segmentation": [rect(2, 3, 12, 20), rect(8, 10, 20, 18)], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [30, 5, 12, 10], "area": 120.0,
             "segmentation": [rect(30, 5, 42, 15)], "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 18, "bbox": [15, 20, 20, 10], "area": 200.0,
             "segmentation": [rect(15, 20, 35, 30)], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
    }  # fmt: skip
    (d / "instances.json").write_text(json.dumps(inst))

    def sent(sid: int, text: str, **extra) -> dict:
        return {"tokens": text.split(), "raw": text.capitalize(), "sent_id": sid, "sent": text, **extra}

    grefs = [
        {"ref_id": 10, "image_id": 5, "split": "val", "ann_id": [1], "category_id": [1], "no_target": False,
         "file_name": "COCO_train2014_000000000005.jpg", "sent_ids": [100, 101],
         "sentences": [sent(100, "left man"), sent(101, "man in red")]},
        {"ref_id": 11, "image_id": 5, "split": "val", "ann_id": [1, 2], "category_id": [1, 1],
         "no_target": False, "file_name": "COCO_train2014_000000000005.jpg", "sent_ids": [102],
         "sentences": [sent(102, "both people")]},
        {"ref_id": 12, "image_id": 5, "split": "testA", "ann_id": [-1], "category_id": [-1],
         "no_target": True, "file_name": "COCO_train2014_000000000005.jpg", "sent_ids": [103, 104],
         "sentences": [sent(103, "the zebra", exist=False), sent(104, "cat on the left", exist=False)]},
        {"ref_id": 13, "image_id": 5, "split": "train", "ann_id": [3, 1, 2], "category_id": [18, 1, 1],
         "no_target": False, "file_name": "COCO_train2014_000000000005.jpg", "sent_ids": [105],
         "sentences": [sent(105, "everything")]},
        {"ref_id": 14, "image_id": 5, "split": "train", "ann_id": [2], "category_id": [1],
         "no_target": False, "file_name": "COCO_train2014_000000000005.jpg", "sent_ids": [],
         "sentences": []},  # no sentences: skipped, as ReLA's loader does
    ]  # fmt: skip
    (d / "grefs(unc).json").write_text(json.dumps(grefs))
    img = root / "images" / "train2014" / "COCO_train2014_000000000005.jpg"
    img.parent.mkdir(parents=True)
    Image.new("RGB", (W, H), (90, 120, 30)).save(img)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_grefcoco(tmp_path_factory.mktemp("gref"))


def by_id(ds) -> dict:
    return {r.sample_id: r for r in ds}


def test_single_target_ref(root):
    recs = by_id(open_dataset(root, "grefcoco", "all"))
    r = recs["100"]
    assert (r.text, r.raw_text, r.split, r.ref_id) == ("left man", "Left man", "val", 10)
    assert r.ann_ids == (1,) and not r.no_target and r.meta["category_ids"] == (1,)
    np.testing.assert_array_equal(r.boxes, [[2, 3, 20, 20]])
    m = r.load_mask()
    assert m.max() == 1 and m.dtype == np.uint8
    np.testing.assert_array_equal(m, box_mask((2, 3, 12, 20), (8, 10, 20, 18)))
    assert Path(r.image_path).is_file() and r.image_size == (H, W)


def test_multi_target_one_box_per_object_and_union_mask(root):
    recs = by_id(open_dataset(root, "grefcoco", "all"))
    r = recs["102"]
    assert r.ann_ids == (1, 2) and r.boxes.shape == (2, 4) and not r.no_target
    np.testing.assert_array_equal(r.boxes, [[2, 3, 20, 20], [30, 5, 42, 15]])
    np.testing.assert_array_equal(r.load_mask(), box_mask((2, 3, 12, 20), (8, 10, 20, 18), (30, 5, 42, 15)))
    r3 = recs["105"]  # order of ann_id is kept
    assert r3.ann_ids == (3, 1, 2) and r3.meta["category_ids"] == (18, 1, 1)
    np.testing.assert_array_equal(r3.boxes[0], [15, 20, 35, 30])
    assert int(r3.load_mask().sum()) == int(
        box_mask((2, 3, 12, 20), (8, 10, 20, 18), (30, 5, 42, 15), (15, 20, 35, 30)).sum()
    )


def test_no_target_has_no_box_and_an_empty_mask(root):
    recs = by_id(open_dataset(root, "grefcoco", "testA"))
    assert sorted(recs) == ["103", "104"]
    for r in recs.values():
        assert r.no_target and r.ann_ids == () and r.boxes.shape == (0, 4) and r.boxes.dtype == np.float32
        m = r.load_mask()
        assert m.shape == (H, W) and not m.any()
        assert "category_ids" not in r.meta  # [-1] is not a category
    assert recs["103"].meta["exist"] is False and recs["104"].text == "cat on the left"


def test_refs_without_sentences_are_skipped(root):
    ds = open_dataset(root, "grefcoco", "train")
    assert [r.sample_id for r in ds] == ["105"] and ds.skipped_empty == 1
    assert len(open_dataset(root, "grefcoco", "all")) == 6


def test_stats_and_protocol(root):
    ds = open_dataset(root, "grefcoco", "all")
    assert ds.protocol == dataset_spec("grefcoco").protocol and ds.task == "gres"
    st = dataset_stats(ds)
    assert st["splits"]["testA"]["no_target"] == 2 and st["splits"]["testA"]["boxes"] == 0
    assert st["splits"]["val"] == {
        "images": 1,
        "expressions": 3,
        "refs": 2,
        "no_target": 0,
        "multi_target": 1,
        "boxes": 4,
        "objects": 2,
    }
