"""SimREC / LaConvNet merged layout: ``anns/<ds>.json`` + ``masks/<ds>/<mask_id>.npy``.

``anns/<ds>.json`` is ``{split: [{iid, bbox (xywh), cat_id, refs: [sentence, ...], mask_id}]}``; images
as the LaConvNet code finds them (``images/train2014/COCO_train2014_%012d.jpg``, ReferIt
``images/refclef/%d.jpg``); masks are ``(H, W)`` or ``(H, W, 1)`` arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langground.data import dataset_spec, open_dataset
from langground.data.stats import dataset_stats

H, W = 24, 32


def mask(y0: int, y1: int, x0: int, x1: int, extra_dim: bool = False) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m[:, :, None] if extra_dim else m


def make_simrec(root: Path, ds: str = "refcoco") -> Path:
    anns = {
        "train": [
            {
                "iid": 42,
                "bbox": [4, 5, 10, 12],
                "cat_id": 1,
                "refs": ["man on the left", "left guy"],
                "mask_id": 0,
            },
            {"iid": 42, "bbox": [20.5, 2, 8, 6.5], "cat_id": 3, "refs": ["the car"], "mask_id": 1},
        ],
        "val": [{"iid": 7, "bbox": [0, 0, 5, 5], "cat_id": 1, "refs": ["tiny thing"], "mask_id": 2}],
    }
    (root / "anns").mkdir(parents=True)
    (root / "anns" / f"{ds}.json").write_text(json.dumps(anns))
    md = root / "masks" / ds
    md.mkdir(parents=True)
    np.save(md / "0.npy", mask(5, 17, 4, 14))
    np.save(md / "1.npy", mask(2, 8, 20, 28, extra_dim=True))  # (H, W, 1), as some exports store it
    np.save(md / "2.npy", mask(0, 5, 0, 5).astype(bool))
    return root


def coco_images(root: Path) -> None:
    for iid in (42, 7):
        p = root / "images" / "train2014" / f"COCO_train2014_{iid:012d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H)).save(p)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = make_simrec(tmp_path_factory.mktemp("simrec"))
    coco_images(root)
    return root


def test_every_sentence_of_every_entry_is_a_record(root):
    ds = open_dataset(root, "simrec-refcoco", "train")
    assert ds.protocol == dataset_spec("simrec-refcoco").protocol and len(ds) == 3
    assert [r.text for r in ds] == ["man on the left", "left guy", "the car"]
    assert [r.sample_id for r in ds] == ["train/0/0", "train/0/1", "train/1/0"]
    np.testing.assert_array_equal(ds[0].boxes, [[4, 5, 14, 17]])
    np.testing.assert_array_equal(ds[2].boxes, [[20.5, 2, 28.5, 8.5]])
    r = ds[0]
    assert r.image_id == 42 and r.meta == {"mask_id": 0, "category_ids": (1,)}
    assert r.image_path.endswith("images/train2014/COCO_train2014_000000000042.jpg") and r.image_size == (
        H,
        W,
    )


def test_npy_masks_2d_3d_and_bool(root):
    ds = open_dataset(root, "simrec-refcoco", "all")
    recs = {r.sample_id: r for r in ds}
    np.testing.assert_array_equal(recs["train/0/1"].load_mask(), mask(5, 17, 4, 14))
    m1 = recs["train/1/0"].load_mask()
    assert m1.shape == (H, W) and m1.dtype == np.uint8
    np.testing.assert_array_equal(m1, mask(2, 8, 20, 28))
    np.testing.assert_array_equal(recs["val/0/0"].load_mask(), mask(0, 5, 0, 5))


def test_annotations_only_take_the_size_from_the_mask(tmp_path):
    ds = open_dataset(make_simrec(tmp_path), "simrec-refcoco", "val")
    assert ds[0].image_size == (H, W)  # from the .npy header; no image on disk


def test_referit_image_names(tmp_path):
    ds = open_dataset(make_simrec(tmp_path, "referit"), "simrec-referit", "val")
    assert ds[0].image_path.endswith("images/refclef/7.jpg")  # "%d.jpg" % iid under images/refclef


def test_stats(root):
    st = dataset_stats(open_dataset(root, "simrec-refcoco", "all"))
    assert st["splits"]["train"]["expressions"] == 3 and st["splits"]["train"]["images"] == 1
    assert st["splits"]["val"]["boxes"] == 1
