"""refer-toolkit layout (RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF): a faithful fixture, exact records.

The fixture is what the official files are: ``<ds>/refs(<splitBy>).p`` written by Python 2 (its ``str``
objects are byte strings, so Python 3 must fall back to ``encoding="latin1"``; UTF-8 sentences must come
back readable), ``<ds>/instances.json`` with polygon, uncompressed-RLE (iscrowd) and compressed-RLE
segmentations, images under the toolkit's ``images/mscoco/images/train2014``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from langground.data import dataset_spec, open_dataset
from langground.data.stats import dataset_stats

# -- a Python-2 pickle writer (protocols 0 and 2, the way cPickle writes lists/dicts/str/int/float) ------


class Unicode(str):
    """Written as a Python-2 ``unicode`` (BINUNICODE / UNICODE), which loads the same either way."""


def py2_pickle(obj: object, protocol: int = 2) -> bytes:
    """Bytes Python 2's cPickle would write for ``obj``; Python-3 ``str`` is written as a Py2 ``str``
    (UTF-8 bytes, SHORT_BINSTRING / STRING), ``bytes`` likewise, so non-ASCII text needs latin1 to load."""
    out = bytearray(b"\x80\x02" if protocol == 2 else b"")
    memo = [0]

    def put() -> None:
        i = memo[0]
        memo[0] += 1
        if protocol == 2:
            out.extend(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))
        else:
            out.extend(b"p%d\n" % i)

    def text(b: bytes) -> None:
        if protocol == 2:
            out.extend((b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b)
        else:  # Python 2 repr: non-ASCII bytes as \xNN escapes
            esc = "".join(chr(c) if 32 <= c < 127 and c not in (39, 92) else f"\\x{c:02x}" for c in b)
            out.extend(b"S'" + esc.encode("ascii") + b"'\n")
        put()

    def w(o: object) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend((b"\x88" if o else b"\x89") if protocol == 2 else (b"I01\n" if o else b"I00\n"))
        elif isinstance(o, int):
            if protocol == 0:
                out.extend(b"I%d\n" % o)
            elif 0 <= o < 256:
                out.extend(b"K" + bytes([o]))
            elif 0 <= o < 65536:
                out.extend(b"M" + struct.pack("<H", o))
            else:
                out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o) if protocol == 2 else b"F%r\n" % o)
        elif isinstance(o, Unicode):
            b = o.encode("utf-8")
            out.extend(
                b"X" + struct.pack("<I", len(b)) + b
                if protocol == 2
                else b"V" + o.encode("raw-unicode-escape") + b"\n"
            )
            put()
        elif isinstance(o, (str, bytes)):
            text(o.encode("utf-8") if isinstance(o, str) else o)
        elif isinstance(o, list):
            out.extend(b"]" if protocol == 2 else b"(l")
            put()
            if protocol == 2 and o:
                out.extend(b"(")
            for x in o:
                w(x)
                if protocol == 0:
                    out.extend(b"a")
            if protocol == 2 and o:
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}" if protocol == 2 else b"(d")
            put()
            if protocol == 2 and o:
                out.extend(b"(")
            for k, v in o.items():
                w(k)
                w(v)
                if protocol == 0:
                    out.extend(b"s")
            if protocol == 2 and o:
                out.extend(b"u")
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


# -- the fixture -----------------------------------------------------------------------------------

H42, W42 = 40, 60  # image 42
H7, W7 = 32, 48  # image 7
POLY_A = [5, 4, 25, 4, 25, 20, 5, 20]  # x 5..25, y 4..20
POLY_B = [15, 10, 35, 10, 35, 30, 15, 30]  # overlaps A on x 15..25, y 10..20


def mask_42_ann101() -> np.ndarray:
    m = np.zeros((H42, W42), np.uint8)
    m[4:20, 5:25] = 1
    m[10:30, 15:35] = 1
    return m


def mask_42_ann102() -> np.ndarray:
    m = np.zeros((H42, W42), np.uint8)
    m[30:38, 40:55] = 1
    return m


def mask_7_ann103() -> np.ndarray:
    m = np.zeros((H7, W7), np.uint8)
    m[2:12, 30:46] = 1
    m[20:30, 3:9] = 1
    return m


def column_major_counts(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of ``m`` computed by hand: column-major runs, starting with zeros."""
    flat = m.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return [int(c) for c in counts]


def write_image(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def instances() -> dict:
    rle7 = mask_utils.encode(np.asfortranarray(mask_7_ann103()))
    return {
        "info": {"description": "fixture"},
        "images": [
            {
                "id": 42,
                "file_name": "COCO_train2014_000000000042.jpg",
                "height": H42,
                "width": W42,
                "license": 1,
            },
            {
                "id": 7,
                "file_name": "COCO_train2014_000000000007.jpg",
                "height": H7,
                "width": W7,
                "license": 1,
            },
        ],
        # COCO licenses look like categories ({url, id, name}): they must not overwrite them.
        "licenses": [{"url": "http://x", "id": 1, "name": "lic"}],
        "annotations": [
            {
                "id": 101,
                "image_id": 42,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [5.0, 4.0, 30.0, 26.0],
                "area": 620.0,
                "segmentation": [POLY_A, POLY_B],
            },
            {
                "id": 102,
                "image_id": 42,
                "category_id": 3,
                "iscrowd": 1,
                "bbox": [40.5, 30.25, 14.5, 7.75],
                "area": 120.0,
                "segmentation": {"size": [H42, W42], "counts": column_major_counts(mask_42_ann102())},
            },
            {
                "id": 103,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [3.0, 2.0, 43.0, 28.0],
                "area": 220.0,
                "segmentation": {"size": [H7, W7], "counts": rle7["counts"].decode("ascii")},
            },
            {  # not referred to: must not be needed
                "id": 999,
                "image_id": 7,
                "category_id": 1,
                "bbox": [0, 0, 1, 1],
                "area": 1.0,
                "segmentation": [[0, 0, 1, 0, 1, 1]],
            },
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 3, "name": "car"}],
    }


def refs(splits: tuple[str, str, str] = ("train", "testA", "testB")) -> list[dict]:
    def sent(sid: int, raw: str, s: str) -> dict:
        return {"tokens": s.split(), "raw": raw, "sent_id": sid, "sent": s}

    return [
        {
            "sent_ids": [10, 11],
            "file_name": "COCO_train2014_000000000042_101.jpg",  # the toolkit's per-ref name, not the image
            "ann_id": 101,
            "ref_id": 1,
            "image_id": 42,
            "split": splits[0],
            "sentences": [
                sent(10, "The LEFT person.", "the left person"),
                sent(11, "Café chair", "café chair"),
            ],
            "category_id": 1,
        },
        {
            "sent_ids": [12],
            "file_name": "COCO_train2014_000000000042_102.jpg",
            "ann_id": 102,
            "ref_id": 2,
            "image_id": 42,
            "split": splits[1],
            "sentences": [sent(12, "crowd of cars", "crowd of cars")],
            "category_id": 3,
        },
        {
            "sent_ids": [13, 14],
            "file_name": "COCO_train2014_000000000007_103.jpg",
            "ann_id": 103,
            "ref_id": 3,
            "image_id": 7,
            "split": splits[2],
            "sentences": [
                sent(13, "two pieces", "two pieces"),
                sent(14, Unicode("the naïve man"), "the man"),
            ],
            "category_id": 1,
        },
    ]


def make_refer(root: Path, ds: str = "refcoco", split_by: str = "unc", protocol: int = 2, **kw) -> Path:
    (root / ds).mkdir(parents=True, exist_ok=True)
    (root / ds / f"refs({split_by}).p").write_bytes(py2_pickle(refs(**kw), protocol))
    (root / ds / "instances.json").write_text(json.dumps(instances()))
    images = root / "images" / "mscoco" / "images" / "train2014"  # the refer toolkit's path
    write_image(images / "COCO_train2014_000000000042.jpg", H42, W42, 1)
    write_image(images / "COCO_train2014_000000000007.jpg", H7, W7, 2)
    return root


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory) -> Path:
    return make_refer(tmp_path_factory.mktemp("refer"))


# -- tests -----------------------------------------------------------------------------------------


def test_fixture_is_a_python2_pickle_that_needs_latin1(refer_root):
    import pickle

    data = (refer_root / "refcoco" / "refs(unc).p").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # Python 3's default ASCII decoding of Py2 str fails on "Café"
    assert pickle.loads(data, encoding="latin1")[0]["sentences"][1]["raw"] == "CafÃ© chair"


@pytest.mark.parametrize("protocol", [0, 2])
def test_every_sentence_is_a_record_with_exact_text_boxes_and_size(tmp_path, protocol):
    ds = open_dataset(make_refer(tmp_path, protocol=protocol), "refcoco", "all")
    assert len(ds) == 5 and ds.splits == ("testA", "testB", "train")
    by_id = {r.sample_id: r for r in ds}
    assert sorted(by_id) == ["10", "11", "12", "13", "14"]
    r10, r11, r12 = by_id["10"], by_id["11"], by_id["12"]
    # sent is what the model reads, raw is kept; the UTF-8 bytes of the Py2 str come back as "é".
    assert (r10.text, r10.raw_text) == ("the left person", "The LEFT person.")
    assert (r11.text, r11.raw_text) == ("café chair", "Café chair")
    assert by_id["14"].raw_text == "the naïve man"  # a Py2 unicode object is not "fixed" twice
    assert r10.ref_id == 1 and r10.ann_ids == (101,) and r10.split == "train" and not r10.no_target
    np.testing.assert_array_equal(r10.boxes, np.array([[5, 4, 35, 30]], np.float32))
    np.testing.assert_array_equal(r12.boxes, np.array([[40.5, 30.25, 55.0, 38.0]], np.float32))
    assert r10.boxes.dtype == np.float32 and r10.boxes.shape == (1, 4)
    assert r10.image_size == (H42, W42) and by_id["13"].image_size == (H7, W7)
    # Images by image_id through instances.json (not the ref's per-ref file_name), in the toolkit folder.
    assert r10.image_path.endswith("images/mscoco/images/train2014/COCO_train2014_000000000042.jpg")
    assert Path(by_id["14"].image_path).name == "COCO_train2014_000000000007.jpg"
    assert r10.meta["category_ids"] == (1,) and r12.meta["category_ids"] == (3,)


def test_masks_polygons_or_merged_uncompressed_and_compressed_rle(refer_root):
    ds = open_dataset(refer_root, "refcoco", "all")
    by_id = {r.sample_id: r for r in ds}
    m = by_id["10"].load_mask()
    assert m.dtype == np.uint8 and m.shape == (H42, W42) and m.max() == 1  # OR, never 2 where they overlap
    np.testing.assert_array_equal(m, mask_42_ann101())
    assert int(m.sum()) == 620  # 320 + 400 - 100 overlap (a sum would give 720 "pixels")
    np.testing.assert_array_equal(by_id["11"].load_mask(), mask_42_ann101())  # same ref, same mask
    np.testing.assert_array_equal(by_id["12"].load_mask(), mask_42_ann102())
    np.testing.assert_array_equal(by_id["13"].load_mask(), mask_7_ann103())


def test_split_selection_and_lazy_masks(refer_root):
    train = open_dataset(refer_root, "refcoco", "train")
    assert [r.sample_id for r in train] == ["10", "11"] and train.split == "train"
    assert [r.text for r in open_dataset(refer_root, "refcoco", "testB")] == ["two pieces", "the man"]
    rec = train[0]
    assert rec.mask_loader is not None and "mask" not in rec.meta  # decoded only on demand
    assert train[-1].sample_id == "11" and [r.sample_id for r in train[0:2]] == ["10", "11"]
    with pytest.raises(IndexError):
        train[2]


def test_stats_count_refs_expressions_and_objects(refer_root):
    st = dataset_stats(open_dataset(refer_root, "refcoco", "all"))
    assert st["layout"] == "refer" and st["records"] == 5
    assert st["splits"]["train"] == {
        "images": 1,
        "expressions": 2,
        "refs": 1,
        "no_target": 0,
        "multi_target": 0,
        "boxes": 2,
        "objects": 1,
    }
    assert st["splits"]["testB"]["expressions"] == 2 and st["splits"]["testA"]["refs"] == 1


@pytest.mark.parametrize(
    "name, folder, split_by, splits",
    [
        ("refcoco+", "refcoco+", "unc", ("train", "testA", "testB")),
        ("refcocog", "refcocog", "umd", ("train", "val", "test")),
        ("refcocog-google", "refcocog", "google", ("train", "val", "val")),
        ("refclef", "refclef", "unc", ("train", "testA", "testC")),
        ("refclef-berkeley", "refclef", "berkeley", ("train", "val", "test")),
    ],
)
def test_other_refer_datasets_and_split_bys(tmp_path, name, folder, split_by, splits):
    ds = open_dataset(make_refer(tmp_path, folder, split_by, splits=splits), name, "all")
    assert len(ds) == 5 and set(ds.splits) == set(splits)
    assert ds.protocol == dataset_spec(name).protocol
    assert {r.split for r in ds if r.ref_id == 3} == {splits[2]}
    np.testing.assert_array_equal(ds[0].boxes, [[5, 4, 35, 30]])


def test_root_may_be_the_dataset_folder_itself(refer_root):
    ds = open_dataset(refer_root / "refcoco", "refcoco", "train")
    assert len(ds) == 2 and Path(ds[0].image_path).is_file()


# -- the instances.json reader: polygons cut out of the text, read back with the mask ------------------


def _instances_variants() -> dict[str, str]:
    inst = instances()
    inst["info"]["note"] = 'a caption mentioning "segmentation": [[1, 2, 3]] in text'
    reordered = {**inst, "annotations": [{"id": a["id"], **a} for a in inst["annotations"]]}  # id first
    dup = {**inst, "annotations": [*inst["annotations"], {**inst["annotations"][3]}]}  # 999 twice
    return {
        "default": json.dumps(inst),
        "compact": json.dumps(inst, separators=(",", ":")),
        "pretty": json.dumps(inst, indent=2),
        "id-first": json.dumps(reordered),
        "duplicate-unreferenced": json.dumps(dup),
    }


@pytest.mark.parametrize("chunk", [7, 61, 1 << 20])
@pytest.mark.parametrize("variant", sorted(_instances_variants()))
def test_instances_reader_any_format_and_chunk_size(tmp_path, monkeypatch, chunk, variant):
    from langground.data import coco

    monkeypatch.setattr(coco, "_CHUNK", chunk)
    path = tmp_path / "instances.json"
    path.write_text(_instances_variants()[variant])
    full = coco.CocoInstances.load(path)  # every annotation
    kept = coco.CocoInstances.load(path, {101, 103}, {42, 7})  # what refs need
    assert sorted(full.ann_row) == [101, 102, 103, 999] and sorted(kept.ann_row) == [101, 103]
    assert full.categories == {1: "person", 3: "car"} and full.images[42] == (
        "COCO_train2014_000000000042.jpg",
        H42,
        W42,
    )
    np.testing.assert_array_equal(kept.boxes_xyxy([101, 103]), [[5, 4, 35, 30], [3, 2, 46, 30]])
    for inst in (full, kept):
        np.testing.assert_array_equal(inst.union_mask([101], H42, W42), mask_42_ann101())
        np.testing.assert_array_equal(inst.union_mask([103], H7, W7), mask_7_ann103())
    np.testing.assert_array_equal(full.union_mask([102], H42, W42), mask_42_ann102())
    assert int(full.union_mask([999], H7, W7).sum()) == 0  # a 3-point sliver covers no pixel
    dups = [p.item for p in kept.problems if p.kind == "duplicate id"]
    assert dups == (["ann 999"] if variant == "duplicate-unreferenced" else [])


def test_polygons_are_read_lazily_and_a_changed_file_is_noticed(tmp_path):
    from langground.data import coco
    from langground.errors import DataError

    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances()))
    inst = coco.CocoInstances.load(path, {101})
    assert isinstance(inst.ann_seg[inst.row(101)], coco.PolygonSpan)  # not parsed until a mask is needed
    assert int(inst.union_mask([101], H42, W42).sum()) == 620
    path.write_text(json.dumps(instances()).replace('"id": 101', '"id": 1010'))
    with pytest.raises(DataError, match="changed since the dataset was opened"):
        inst.union_mask([101], H42, W42)


def test_invalid_json_error_names_the_position_in_the_file_on_disk(tmp_path):
    from langground.data import coco
    from langground.errors import DataError

    path = tmp_path / "instances.json"
    text = json.dumps(instances()).replace('"categories": [', '"categories": [,')  # after the polygons
    path.write_text(text)
    column = text.index("[,") + 2  # 1-based column of the stray comma
    with pytest.raises(DataError, match=rf"invalid JSON at line 1 column {column}:"):
        coco.CocoInstances.load(path, {101})
    lines = json.dumps(instances(), indent=1).splitlines()
    lines[30] += " oops"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"invalid JSON at line 31 "):
        coco.CocoInstances.load(path)
