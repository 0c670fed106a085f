"""Karpathy split files (COCO, Flickr30k) as retrieval records, on fixtures in the real format, and the
gallery metric's conventions (image->text: any caption counts; text->image: ranked over every image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langground.data import detect_datasets, open_dataset
from langground.engine.metrics import RetrievalMetric
from langground.errors import DataError


def _sent(raw: str, imgid: int, sentid: int) -> dict:
    return {"tokens": raw.lower().strip(" .").split(), "raw": raw, "imgid": imgid, "sentid": sentid}


def _coco(root: Path) -> Path:
    images = []
    layout = [("val2014", 391895, "test"), ("val2014", 522418, "restval"), ("train2014", 184613, "train"),
              ("val2014", 318219, "val")]  # fmt: skip
    sid = 0
    for imgid, (folder, cocoid, split) in enumerate(layout):
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64 + imgid, 48), "gray").save(root / folder / name)
        sents = [_sent(f"A man riding a bike {imgid}-{k}.", imgid, sid + k) for k in range(5)]
        if imgid == 0:
            sents[1]["raw"] = "  "  # COCO has a few blank raws: the tokens stand in
        images.append({"filepath": folder, "sentids": [s["sentid"] for s in sents], "filename": name,
                       "imgid": imgid, "split": split, "sentences": sents, "cocoid": cocoid})  # fmt: skip
        sid += 5
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


def _flickr(root: Path) -> Path:
    (root / "flickr30k-images").mkdir(parents=True)
    images = []
    for imgid, (stem, split) in enumerate(
        [("1000092795", "train"), ("1007129816", "test"), ("1009434119", "test")]
    ):
        Image.new("RGB", (50, 40), "gray").save(root / "flickr30k-images" / f"{stem}.jpg")
        sents = [_sent(f"Two dogs play {imgid}-{k} .", imgid, 5 * imgid + k) for k in range(5)]
        images.append({"sentids": [s["sentid"] for s in sents], "imgid": imgid, "sentences": sents,
                       "split": split, "filename": f"{stem}.jpg"})  # fmt: skip
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root


def test_coco_karpathy_records_one_per_caption_restval_in_train(tmp_path):
    root = _coco(tmp_path)
    assert "coco-karpathy" in detect_datasets(root)
    test = open_dataset(root, "coco-karpathy", "test")
    assert test.task == "retrieval" and test.protocol.tasks == ("retrieval",)
    assert len(test) == 5 and {r.image_id for r in test} == {391895}
    r = test[0]
    assert r.sample_id == "0" and r.text == "A man riding a bike 0-0." and r.boxes.shape == (0, 4)
    assert Path(r.image_path) == root / "val2014" / "COCO_val2014_000000391895.jpg" and r.image_size == (
        48,
        64,
    )
    assert test[1].text == "a man riding a bike 0-1"  # blank raw -> tokens
    train = open_dataset(root, "coco-karpathy", "train")
    assert {r.image_id for r in train} == {522418, 184613}  # restval joins train (ALBEF / BLIP / SLAN)
    assert set(train.splits) == {"train", "val", "test"}
    strict = open_dataset(root, "coco-karpathy", "train", restval=False)
    assert {r.image_id for r in strict} == {184613} and "restval" in strict.splits
    assert len(open_dataset(root, "coco-karpathy", "all")) == 20


def test_flickr30k_karpathy_images_and_ids(tmp_path):
    root = _flickr(tmp_path)
    ds = open_dataset(root, "flickr30k-karpathy", "test")
    assert len(ds) == 10 and [r.image_id for r in ds][::5] == ["1007129816", "1009434119"]
    assert Path(ds[0].image_path) == root / "flickr30k-images" / "1007129816.jpg" and ds[0].image_size == (
        40,
        50,
    )
    assert ds[0].sample_id == "5" and ds[0].text == "Two dogs play 1-0 ."


def test_karpathy_bad_input_is_one_line(tmp_path):
    root = _flickr(tmp_path)
    with pytest.raises(DataError, match="unknown split 'testA'; splits present: test, train"):
        open_dataset(root, "flickr30k-karpathy", "testA")
    doc = json.loads((root / "dataset_flickr30k.json").read_text())
    del doc["images"][1]["sentences"][2]["sentid"]
    (root / "dataset_flickr30k.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"images\[1\]\.sentences\[2\]: field 'sentid' is None; expected int"):
        open_dataset(root, "flickr30k-karpathy", "test")
    with pytest.raises(DataError, match="dataset_coco.json: file not found"):
        open_dataset(root, "coco-karpathy", "test")
    with pytest.raises(DataError, match="task 'rec' is not available"):
        open_dataset(root, "flickr30k-karpathy", "test", task="rec")


def test_gallery_recall_counts_any_caption_for_images_and_ranks_texts_over_every_image():
    # 3 images, texts 0-1 of image 0, 2-3 of image 1, 4 of image 2
    sim = np.array(
        [
            [0.1, 0.9, 0.0],  # text 0: image 1 first -> its image at rank 2
            [0.8, 0.2, 0.0],  # text 1: right at 1
            [0.0, 0.5, 0.6],  # text 2: rank 2
            [0.3, 0.1, 0.2],  # text 3: rank 3 (last of all images)
            [0.0, 0.1, 0.7],  # text 4: right at 1
        ]
    )
    metric = RetrievalMetric(ks=(1, 2))
    metric.update(sim, [0, 0, 1, 1, 2])
    out = metric.compute()
    assert out["retrieval/r@1_t2i"] == pytest.approx(2 / 5) and out["retrieval/r@2_t2i"] == pytest.approx(
        4 / 5
    )
    # image 0: its best caption (text 1, 0.8) is top of column 0 -> right at 1 though text 0 is not;
    # image 1: text 0 (0.9, not its caption) beats its best (0.5) -> rank 2; image 2: text 4 (0.7) first
    assert out["retrieval/r@1_i2t"] == pytest.approx(2 / 3) and out["retrieval/r@2_i2t"] == pytest.approx(1.0)
    assert out["retrieval/rsum"] == pytest.approx(2 / 5 + 4 / 5 + 2 / 3 + 1.0)
