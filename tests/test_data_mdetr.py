"""MDETR refexp layout: ``mdetr_annotations/finetune_{refcoco,refcoco+,refcocog}_{split}.json``.

COCO-style, but one image entry per expression: the entry has the ``caption``, the COCO image id as
``original_id`` and ``tokens_negative``; its annotation has the box (xywh), ``tokens_positive`` (character
spans of the caption naming the object), the COCO annotation id as ``original_id`` and the polygons.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langground.data import dataset_spec, open_dataset
from langground.data.stats import dataset_stats

H, W = 30, 40


def entry(eid: int, caption: str, coco_image: int = 42, **kw) -> dict:
    return {
        "file_name": f"COCO_train2014_{coco_image:012d}.jpg",
        "height": H,
        "width": W,
        "id": eid,
        "original_id": coco_image,
        "caption": caption,
        "dataset_name": "refcoco",
        "tokens_negative": [[0, len(caption)]],
        "sentence_id": eid % 3,
        "tokens_positive_eval": [[[0, len(caption)]]],
        **kw,
    }


def ann(aid: int, eid: int, bbox: list[float], spans: list[list[int]], coco_ann: int, seg=None) -> dict:
    out = {
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        "image_id": eid,
        "category_id": 1,
        "id": aid,
        "bbox": bbox,
        "tokens_positive": spans,
        "original_id": coco_ann,
    }
    if seg is not None:
        out["segmentation"] = seg
    return out


def write(path: Path, images: list[dict], anns: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cats = [{"supercategory": "person", "id": 1, "name": "person"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def make_mdetr(
    root: Path, dataset: str = "refcoco", splits: tuple[str, ...] = ("train", "val", "testA")
) -> Path:
    d = root / "mdetr_annotations"
    poly = [4, 5, 14, 5, 14, 25, 4, 25]  # x 4..14, y 5..25
    for k, s in enumerate(splits):
        base = 10 * k
        images = [entry(base, "the man on the left"), entry(base + 1, "red car right", coco_image=7)]
        anns = [
            ann(base, base, [4.0, 5.0, 10.0, 20.0], [[4, 7], [8, 19]], coco_ann=101, seg=[poly]),
            ann(base + 1, base + 1, [20.5, 2.0, 15.0, 9.5], [[0, 7]], coco_ann=102),
        ]
        write(d / f"finetune_{dataset}_{s}.json", images, anns)
    for iid in (42, 7):
        img = root / "train2014" / f"COCO_train2014_{iid:012d}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), (10, 20, 30)).save(img)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_mdetr(tmp_path_factory.mktemp("mdetr"))


def test_one_record_per_image_entry_with_caption_box_and_spans(root):
    ds = open_dataset(root, "mdetr-refcoco", "val")
    assert len(ds) == 2 and ds.splits == ("val",)
    r0, r1 = ds[0], ds[1]
    assert (r0.sample_id, r0.text, r0.split, r0.image_id) == ("10", "the man on the left", "val", 42)
    np.testing.assert_array_equal(r0.boxes, [[4, 5, 14, 25]])
    np.testing.assert_array_equal(r1.boxes, [[20.5, 2.0, 35.5, 11.5]])
    assert r0.meta["tokens_positive"] == [[[4, 7], [8, 19]]]
    assert r0.text[4:7] == "man" and r0.meta["tokens_negative"] == [[0, 19]]
    assert r0.meta["dataset_name"] == "refcoco" and r0.ann_ids == (101,)
    assert Path(r0.image_path).name == "COCO_train2014_000000000042.jpg" and Path(r0.image_path).is_file()
    assert r1.image_id == 7 and r0.image_size == (H, W) and not r0.no_target


def test_masks_from_segmentation_when_present(root):
    ds = open_dataset(root, "mdetr-refcoco", "train")
    m = ds[0].load_mask()
    expected = np.zeros((H, W), np.uint8)
    expected[5:25, 4:14] = 1
    np.testing.assert_array_equal(m, expected)
    assert ds[1].mask_loader is None  # no segmentation in that annotation


def test_all_splits_and_other_datasets(tmp_path):
    ds = open_dataset(make_mdetr(tmp_path, "refcocog", ("train", "val", "test")), "mdetr-refcocog", "all")
    assert ds.splits == ("test", "train", "val") and len(ds) == 6
    assert ds.protocol == dataset_spec("mdetr-refcocog").protocol
    assert dataset_stats(ds)["splits"]["test"]["expressions"] == 2


def test_sizes_as_strings_and_files_in_the_root(tmp_path):
    # MDETR's flickr-style files store height/width as strings; files may sit directly in the root.
    write(
        tmp_path / "finetune_refcoco+_testB.json",
        [entry(3, "dog", height="30", width="40")],
        [ann(3, 3, [1, 2, 3, 4], [[0, 3]], 9)],
    )
    ds = open_dataset(tmp_path, "mdetr-refcoco+", "testB")
    assert ds[0].image_size == (30, 40) and ds[0].text == "dog"
    np.testing.assert_array_equal(ds[0].boxes, [[1, 2, 4, 6]])


def test_phrase_task_turns_tokens_positive_into_phrases(tmp_path):
    caption = "the man on the left and a red car"
    images = [entry(1, caption), entry(2, "a dog", coco_image=7), entry(3, "nothing here")]
    anns = [
        # one phrase split in two spans by MDETR ("man" + "on the left"): the enclosing span
        ann(1, 1, [4.0, 5.0, 10.0, 20.0], [[4, 7], [8, 19]], coco_ann=101),
        # two boxes naming the same span: one phrase with both boxes
        ann(2, 1, [20.0, 2.0, 5.0, 5.0], [[24, 33]], coco_ann=102),
        ann(3, 1, [30.0, 2.0, 5.0, 5.0], [[24, 33]], coco_ann=103),
        ann(4, 2, [1.0, 1.0, 3.0, 3.0], [[0, 5]], coco_ann=104),
        ann(5, 3, [1.0, 1.0, 3.0, 3.0], [], coco_ann=105),  # names no span: no phrase
    ]
    write(tmp_path / "mdetr_annotations" / "finetune_refcoco_val.json", images, anns)
    rec = open_dataset(tmp_path, "mdetr-refcoco", "val")
    assert len(rec) == 3 and rec[0].phrases == () and rec.task == "rec"
    ds = open_dataset(tmp_path, "mdetr-refcoco", "val", task="phrase")
    assert ds.task == "phrase" and ds.protocol.tasks == ("phrase",) and len(ds) == 2
    assert ds.skipped == {"no_phrase_caption": 1}
    r = ds[0]
    assert r.text == caption and r.boxes.shape == (3, 4) and r.ann_ids == (101, 102, 103)
    assert [r.text[a:b] for a, b in (p.span for p in r.phrases)] == ["man on the left", "a red car"]
    np.testing.assert_array_equal(r.phrases[0].boxes, [[4, 5, 14, 25]])
    np.testing.assert_array_equal(r.phrases[1].boxes, [[20, 2, 25, 7], [30, 2, 35, 7]])
    assert [p.phrase_id for p in r.phrases] == ["101", "102,103"]
    assert r.meta["tokens_positive"][0] == [[4, 7], [8, 19]]
    assert ds[1].text == "a dog" and ds[1].phrases[0].span == (0, 5)


def test_phrase_task_rejects_spans_outside_the_caption(tmp_path):
    from langground.errors import DataError

    write(
        tmp_path / "finetune_refcoco_val.json",
        [entry(1, "a dog"), entry(2, "a cat")],
        [ann(1, 1, [1, 2, 3, 4], [[0, 9]], 9), ann(2, 2, [1, 2, 3, 4], [[2, 5]], 10)],
    )
    with pytest.raises(
        DataError, match=r"finetune_refcoco_val.json: annotation 9 of entry 1: tokens_positive span \[0, 9\]"
    ):
        open_dataset(tmp_path, "mdetr-refcoco", "val", task="phrase")
    lenient = open_dataset(tmp_path, "mdetr-refcoco", "val", task="phrase", strict=False)
    assert [r.text for r in lenient] == ["a cat"] and len(lenient.index_problems) == 1
    with pytest.raises(DataError, match="unknown task 'vqa' for MDETR"):
        open_dataset(tmp_path, "mdetr-refcoco", "val", task="vqa")
