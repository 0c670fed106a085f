"""TransVG / ReSC index files: ``data/<name>/<name>_<split>.pth`` (torch-saved lists of tuples) + ``ln_data``.

Per dataset, as TransVG's ``data_loader.py`` unpacks them: flickr ``(img, bbox_xyxy, phrase)``; referit
``(img, mask_file, bbox_xyxy, phrase, attr)``; unc / unc+ / gref / gref_umd ``(img, ann_id, bbox_xywh,
sentence, attr)``. Boxes come as lists or numpy arrays, depending on who made the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from langground.data import dataset_spec, open_dataset
from langground.data.stats import dataset_stats

COCO = "COCO_train2014_000000000042.jpg"


def image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (1, 2, 3)).save(path)


def index(root: Path, name: str, split: str, rows: list[tuple]) -> None:
    path = root / "data" / name / f"{name}_{split}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(rows, path)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("transvg")
    ln = root / "ln_data"
    index(root, "flickr", "test", [
        ("1000092795.jpg", [10, 20, 30, 40], "two young guys"),
        ("1000092795.jpg", np.array([0, 1, 5, 6]), "shaggy hair"),
    ])  # fmt: skip
    index(root, "flickr", "val", [("36979.jpg", [1, 1, 9, 9], "a dog")])
    image(ln / "Flickr30k" / "flickr30k_images" / "1000092795.jpg", 64, 48)
    image(ln / "Flickr30k" / "flickr30k_images" / "36979.jpg", 20, 20)

    index(root, "referit", "test", [
        ("8756.jpg", "8756_1.pth", [1, 2, 11, 22], "sky", []),
        ("8756.jpg", "8756_2.npy", np.array([3, 4, 8, 9]), "water", ["blue"]),
    ])  # fmt: skip
    image(ln / "referit" / "images" / "8756.jpg", 30, 25)
    mask = torch.zeros(25, 30, dtype=torch.bool)
    mask[2:22, 1:11] = True
    (ln / "referit" / "mask").mkdir(parents=True)
    torch.save(mask, ln / "referit" / "mask" / "8756_1.pth")
    np.save(ln / "referit" / "mask" / "8756_2.npy", np.pad(np.ones((5, 5), np.uint8), ((4, 16), (3, 22))))

    for name, split in (
        ("unc", "testA"),
        ("unc", "val"),
        ("unc+", "testB"),
        ("gref", "val"),
        ("gref_umd", "test"),
    ):
        index(root, name, split, [
            (COCO, 101, [4.0, 5.0, 10.0, 20.0], "the man on the left", ["man", "left"]),
            (COCO, np.int64(102), np.array([20.5, 2.0, 15.0, 9.5]), "red car", []),
        ])  # fmt: skip
    image(ln / "other" / "images" / "mscoco" / "images" / "train2014" / COCO, 40, 30)
    return root


def test_flickr_tuples_xyxy(root):
    ds = open_dataset(root, "transvg-flickr", "all")
    assert ds.splits == ("test", "val") and len(ds) == 3
    recs = {r.sample_id: r for r in ds}
    r = recs["test/0"]
    assert (r.text, r.split, r.image_id) == ("two young guys", "test", "1000092795")
    np.testing.assert_array_equal(r.boxes, [[10, 20, 30, 40]])
    np.testing.assert_array_equal(recs["test/1"].boxes, [[0, 1, 5, 6]])
    assert r.image_size == (48, 64) and r.image_path.endswith(
        "ln_data/Flickr30k/flickr30k_images/1000092795.jpg"
    )
    assert r.mask_loader is None and r.ann_ids == ()


def test_referit_tuples_xyxy_with_mask_files(root):
    ds = open_dataset(root, "transvg-referit", "test")
    r0, r1 = ds[0], ds[1]
    assert (r0.text, r1.text) == ("sky", "water") and r1.meta["attributes"] == ["blue"]
    np.testing.assert_array_equal(r0.boxes, [[1, 2, 11, 22]])
    np.testing.assert_array_equal(r1.boxes, [[3, 4, 8, 9]])
    m0 = r0.load_mask()
    assert m0.shape == (25, 30) and m0.dtype == np.uint8 and int(m0.sum()) == 200 and m0[2:22, 1:11].all()
    m1 = r1.load_mask()
    assert int(m1.sum()) == 25 and m1[4:9, 3:8].all()
    assert r0.meta["mask_file"] == "8756_1.pth"


def test_referit_mat_mask_where_segimg_t_is_zero(tmp_path):
    sio = pytest.importorskip("scipy.io")
    index(tmp_path, "referit", "train", [("1.jpg", "1_1.mat", [0, 0, 4, 3], "ball", [])])
    image(tmp_path / "ln_data" / "referit" / "images" / "1.jpg", 6, 5)
    seg = np.ones((5, 6), np.int32)
    seg[0:3, 0:4] = 0  # ReferIt marks the object with 0
    (tmp_path / "ln_data" / "referit" / "mask").mkdir(parents=True)
    sio.savemat(tmp_path / "ln_data" / "referit" / "mask" / "1_1.mat", {"segimg_t": seg})
    m = open_dataset(tmp_path, "transvg-referit", "train")[0].load_mask()
    np.testing.assert_array_equal(m, (seg == 0).astype(np.uint8))


@pytest.mark.parametrize(
    "name, split", [("unc", "testA"), ("unc+", "testB"), ("gref", "val"), ("gref_umd", "test")]
)
def test_coco_tuples_xywh_with_ann_ids(root, name, split):
    ds = open_dataset(root, f"transvg-{name}", split)
    assert len(ds) == 2 and ds.protocol == dataset_spec(f"transvg-{name}").protocol
    r0, r1 = ds[0], ds[1]
    np.testing.assert_array_equal(r0.boxes, [[4, 5, 14, 25]])
    np.testing.assert_array_equal(r1.boxes, [[20.5, 2.0, 35.5, 11.5]])
    assert (r0.ann_ids, r1.ann_ids) == ((101,), (102,))
    assert (r0.text, r0.meta["attributes"]) == ("the man on the left", ["man", "left"])
    assert r0.image_path.endswith("ln_data/other/images/mscoco/images/train2014/" + COCO)
    assert r0.image_size == (30, 40) and r0.sample_id == f"{split}/0"


def test_stats_without_reading_images(root):
    st = dataset_stats(open_dataset(root, "transvg-unc", "all"))
    assert st["splits"]["testA"]["expressions"] == 2 and st["splits"]["val"]["boxes"] == 2
    assert st["splits"]["val"]["objects"] == 2
