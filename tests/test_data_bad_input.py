"""Bad input: one-line DataErrors naming the file, the record and what was expected; ``data check``
collects every problem (summary table, first offenders with their ids, exit code 1)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from langground.cli import _mount, app
from langground.data import open_dataset
from langground.data.images import image_size, load_image
from langground.errors import DataError

H, W = 20, 30


def one_line(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, DataError) and "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def ref(rid: int, ann, image_id: int, split: str, sents: list[tuple[int, str]]) -> dict:
    return {
        "ref_id": rid,
        "ann_id": ann,
        "image_id": image_id,
        "split": split,
        "category_id": 1,
        "sentences": [{"sent_id": s, "sent": t, "raw": t, "tokens": t.split()} for s, t in sents],
    }


def make_refer(root: Path, refs: list, anns: list[dict] | None = None) -> Path:
    d = root / "refcoco"
    d.mkdir(parents=True, exist_ok=True)
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": H, "width": W} for i in (1, 2, 3)
    ]
    anns = anns or [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "area": 80.0, "segmentation": rect(2, 2, 12, 10)},
    ]  # fmt: skip
    (d / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    img_dir = root / "images" / "train2014"
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 3):
        Image.new("RGB", (W, H), (40, 50, 60)).save(img_dir / f"COCO_train2014_{i:012d}.jpg")
    return root


GOOD = [ref(1, 11, 1, "train", [(100, "the box")])]


# -- one-line errors -------------------------------------------------------------------------------


def test_wrong_layout_name(tmp_path):
    with pytest.raises(DataError) as e:
        open_dataset(make_refer(tmp_path, GOOD), "refcocoo", "train")
    one_line(e, "unknown dataset 'refcocoo'", "did you mean 'refcoco'", "expected one of")
    with pytest.raises(DataError) as e:  # the right name, but the files of another layout
        open_dataset(tmp_path, "grefcoco", "train")
    one_line(e, "grefs(unc).json", "grefs file not found")
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path, "refcoco", "testC")
    one_line(e, "refs(unc).p", "unknown split 'testC'", "splits present: train")


@pytest.mark.parametrize(
    "payload, parts",
    [
        (pickle.dumps({"refs": []}), ("pickle holds a dict", "expected a list of ref dicts")),
        (pickle.dumps([1, 2]), ("entry 0 is a int", "expected a ref dict")),
        (b'{"not": "a pickle"}', ("not a refs pickle", "expected a pickled list of ref dicts")),
        (pickle.dumps([Path("x")]), ("not a refs pickle", "pathlib")),  # would import code: refused
        (
            pickle.dumps([{"ref_id": 5, "image_id": 1, "split": "train"}]),
            ("ref 5", "missing key 'sentences'"),
        ),
    ],
)
def test_a_pickle_that_is_not_a_refs_list(tmp_path, payload, parts):
    make_refer(tmp_path, GOOD)
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(payload)
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path, "refcoco", "all")
    one_line(e, "refs(unc).p", *parts)


def test_json_missing_a_key_names_file_and_record(tmp_path):
    # gRefCOCO ref without image_id
    d = tmp_path / "g" / "grefcoco"
    d.mkdir(parents=True)
    (d / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    grefs = [{"ref_id": 7, "ann_id": [-1], "split": "val", "no_target": True, "sentences": [
        {"sent_id": 1, "sent": "x", "raw": "x"}]}]  # fmt: skip
    (d / "grefs(unc).json").write_text(json.dumps(grefs))
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "g", "grefcoco", "val")
    one_line(e, "grefs(unc).json", "ref 7", "missing key 'image_id'")
    # a sentence without sent_id is named with its ref
    grefs[0]["image_id"] = 1
    grefs[0]["sentences"] = [{"sent": "no id"}]
    (d / "grefs(unc).json").write_text(json.dumps(grefs))
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "g", "grefcoco", "val")
    one_line(e, "ref 7", "has no 'sent_id'")
    # a referred annotation without bbox
    anns = [{"id": 11, "image_id": 1, "category_id": 1, "area": 1.0, "segmentation": rect(0, 0, 2, 2)}]
    make_refer(tmp_path / "r", GOOD, anns)
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "r", "refcoco", "train")
    one_line(e, "instances.json", "annotation 11", "missing key 'bbox'")
    # SimREC entry without refs
    (tmp_path / "s" / "anns").mkdir(parents=True)
    (tmp_path / "s" / "anns" / "refcoco.json").write_text(
        json.dumps(
            {
                "train": [
                    {"iid": 1, "bbox": [0, 0, 1, 1], "refs": ["a"], "mask_id": 0},
                    {"iid": 1, "bbox": [0, 0, 1, 1], "mask_id": 3},
                ]
            }
        )  # fmt: skip
    )
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "s", "simrec-refcoco", "train")
    one_line(e, "refcoco.json", "train entry 1", "mask_id 3", "missing key 'refs'")
    # CLEVR-Ref+ refexp without image_index
    for sub in ("refexps", "scenes"):
        (tmp_path / "c" / sub).mkdir(parents=True)
    (tmp_path / "c" / "scenes" / "clevr_ref+_val_scenes.json").write_text(json.dumps({"scenes": []}))
    refexps = [{"refexp": "the cube", "refexp_index": 4, "program": [{"type": "scene", "_output": [0]}]}]
    (tmp_path / "c" / "refexps" / "clevr_ref+_val_refexps.json").write_text(json.dumps({"refexps": refexps}))
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "c", "clevr-ref+", "val")
    one_line(e, "clevr_ref+_val_refexps.json", "refexp 4", "missing key 'image_index'")
    # MDETR image entry without caption
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "finetune_refcoco_val.json").write_text(
        json.dumps({"images": [{"id": 9, "file_name": "a.jpg", "height": 2, "width": 2}], "annotations": []})
    )
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "m", "mdetr-refcoco", "val")
    one_line(e, "finetune_refcoco_val.json", "image entry 9", "missing key 'caption'")


def test_mask_file_of_the_wrong_shape(tmp_path):
    (tmp_path / "anns").mkdir()
    (tmp_path / "anns" / "refcoco.json").write_text(
        json.dumps({"val": [{"iid": 1, "bbox": [0, 0, 4, 4], "refs": ["a"], "mask_id": 5}]})
    )
    (tmp_path / "masks" / "refcoco").mkdir(parents=True)
    np.save(tmp_path / "masks" / "refcoco" / "5.npy", np.ones((10, 10), np.uint8))
    (tmp_path / "images" / "train2014").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(tmp_path / "images" / "train2014" / "COCO_train2014_000000000001.jpg")
    rec = open_dataset(tmp_path, "simrec-refcoco", "val")[0]
    with pytest.raises(DataError) as e:
        rec.load_mask()
    one_line(e, "5.npy", "record val/0/0", "(10, 10)", f"expected ({H}, {W})")
    # TransVG ReferIt mask of the wrong size
    index = tmp_path / "t" / "data" / "referit"
    index.mkdir(parents=True)
    torch.save([("1.jpg", "1_1.pth", [0, 0, 2, 2], "sky", [])], index / "referit_test.pth")
    (tmp_path / "t" / "ln_data" / "referit" / "images").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(tmp_path / "t" / "ln_data" / "referit" / "images" / "1.jpg")
    (tmp_path / "t" / "ln_data" / "referit" / "mask").mkdir(parents=True)
    torch.save(torch.ones(3, 3), tmp_path / "t" / "ln_data" / "referit" / "mask" / "1_1.pth")
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "t", "transvg-referit", "test")[0].load_mask()
    one_line(e, "1_1.pth", "entry test/0", "(3, 3)", f"expected ({H}, {W})")


def test_image_that_fails_to_decode(tmp_path):
    root = make_refer(tmp_path, GOOD)
    rec = open_dataset(root, "refcoco", "train")[0]
    Path(rec.image_path).write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    with pytest.raises(DataError) as e:
        load_image(rec.image_path, rec.sample_id)
    one_line(e, rec.image_path, "record 100", "fails to decode", "expected a JPEG/PNG image")
    with pytest.raises(DataError) as e:
        image_size(rec.image_path, f"sent {rec.sample_id}")
    one_line(e, rec.image_path, "sent 100", "expected a JPEG/PNG image")
    Path(rec.image_path).unlink()
    with pytest.raises(DataError) as e:
        load_image(rec.image_path, rec.sample_id)
    one_line(e, rec.image_path, "image not found", "record 100")


def test_strict_open_stops_at_the_first_malformed_entry_and_lenient_open_keeps_going(tmp_path):
    bad = [*GOOD, {"ref_id": 2, "image_id": 1, "split": "train", "ann_id": 11}, "junk"]
    root = make_refer(tmp_path, bad)
    with pytest.raises(DataError) as e:
        open_dataset(root, "refcoco", "all")
    one_line(e, "ref 2", "missing key 'sentences'")
    ds = open_dataset(root, "refcoco", "all", strict=False)
    assert len(ds) == 1 and ds[0].text == "the box"
    assert [(p.kind, p.item) for p in ds.index_problems] == [
        ("malformed entry", "ref 2"),
        ("malformed entry", "ref #2"),
    ]


# -- data check ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    _mount()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def wide_console(monkeypatch):
    from langground.cli._common import console

    monkeypatch.setattr(console, "width", 250)  # keep table cells on one line for the assertions


def broken_refer(root: Path) -> Path:
    refs = [
        ref(1, 11, 1, "train", [(100, "the box"), (101, "  ")]),  # empty sentence
        ref(2, 12, 2, "train", [(102, "too big")]),  # box outside the image, area mismatch
        ref(3, 13, 3, "val", [(103, "corrupt image"), (100, "dup id")]),  # duplicate sent_id
        ref(4, 99, 1, "val", [(104, "dangling")]),  # annotation 99 does not exist
        {"ref_id": 5, "image_id": 1, "split": "val", "ann_id": 11},  # no sentences key
        ref(6, 11, 7, "val", [(106, "missing image")]),
    ]
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "area": 80.0, "segmentation": rect(2, 2, 12, 10)},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [20, 5, 25, 10], "area": 500.0, "segmentation": rect(20, 5, 30, 15)},
        {"id": 13, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25.0, "segmentation": rect(0, 0, 5, 5)},
    ]  # fmt: skip
    make_refer(root, refs, anns)
    (root / "images" / "train2014" / "COCO_train2014_000000000003.jpg").write_bytes(b"GIF89a broken")
    return root


def test_check_collects_every_problem_with_ids(cli, tmp_path):
    root = broken_refer(tmp_path)
    res = cli("data", "check", root, "--dataset", "refcoco", "--json")
    assert res.exit_code == 1, res.output
    rep = json.loads(res.stdout)
    assert rep["ok"] is False and rep["records"] == 6
    assert rep["problems"] == {
        "malformed entry": 1,
        "unreadable record": 1,
        "missing image": 1,
        "unreadable image": 1,
        "box outside image": 1,
        "empty sentence": 1,
        "mask area": 1,
        "duplicate id": 1,
        "dangling reference": 1,
    }
    first = rep["first_offenders"]
    assert (
        first["malformed entry"][0].startswith("ref 5: ")
        and "missing key 'sentences'" in first["malformed entry"][0]
    )
    assert first["dangling reference"] == ["ref 4: points at annotation 99, which is not in instances.json"]
    assert first["empty sentence"][0].startswith("sample train/101")
    assert (
        first["box outside image"][0].startswith("sample train/102")
        and "30x20" in first["box outside image"][0]
    )
    assert first["mask area"][0].startswith("ann 12: decoded mask has 100 px")
    assert (
        first["unreadable image"][0].startswith("image 3: ")
        and "COCO_train2014_000000000003.jpg" in first["unreadable image"][0]
    )
    assert first["missing image"][0].startswith("image 7: ")
    assert first["duplicate id"][0].startswith("sent_id 100")


def test_check_table_and_exit_codes(cli, tmp_path, wide_console):
    res = cli("data", "check", broken_refer(tmp_path / "bad"), "--dataset", "refcoco")
    assert res.exit_code == 1
    out = res.stdout
    for kind in ("malformed entry", "dangling reference", "box outside image", "mask area", "missing image"):
        assert kind in out
    assert "ref 5: " in out and "sample train/102" in out and "9 problem(s)" in out
    good = cli("data", "check", make_refer(tmp_path / "good", GOOD), "--dataset", "refcoco")
    assert good.exit_code == 0 and "has no problems" in good.stdout
    unknown = cli("data", "check", tmp_path / "good", "--dataset", "refcocoo")
    assert unknown.exit_code == 2 and "unknown dataset 'refcocoo'" in unknown.output


def test_check_reports_an_unreadable_file_and_bad_masks_of_other_layouts(cli, tmp_path):
    root = make_refer(tmp_path / "r", GOOD)
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps({"not": "a list"}))
    res = cli("data", "check", root, "--dataset", "refcoco", "--json")
    assert res.exit_code == 1
    rep = json.loads(res.stdout)
    assert (
        rep["problems"] == {"unreadable file": 1}
        and "expected a list of ref dicts" in rep["first_offenders"]["unreadable file"][0]
    )
    # SimREC: one mask of the wrong shape, one entry missing its bbox, one good entry
    s = tmp_path / "s"
    (s / "anns").mkdir(parents=True)
    entries = [
        {"iid": 1, "bbox": [0, 0, 4, 4], "refs": ["good"], "mask_id": 0},
        {"iid": 1, "bbox": [0, 0, 4, 4], "refs": ["bad mask"], "mask_id": 1},
        {"iid": 1, "refs": ["no box"], "mask_id": 2},
    ]
    (s / "anns" / "refcoco.json").write_text(json.dumps({"val": entries}))
    (s / "masks" / "refcoco").mkdir(parents=True)
    np.save(s / "masks" / "refcoco" / "0.npy", np.pad(np.ones((4, 4), np.uint8), ((0, H - 4), (0, W - 4))))
    np.save(s / "masks" / "refcoco" / "1.npy", np.ones((5, 5), np.uint8))
    (s / "images" / "train2014").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(s / "images" / "train2014" / "COCO_train2014_000000000001.jpg")
    res = cli("data", "check", s, "--dataset", "simrec-refcoco", "--json")
    assert res.exit_code == 1
    rep = json.loads(res.stdout)
    assert rep["problems"] == {"malformed entry": 1, "mask": 1} and rep["records"] == 2
    assert (
        rep["first_offenders"]["mask"][0].startswith("sample val/1/0: ")
        and "1.npy" in rep["first_offenders"]["mask"][0]
    )
    assert rep["first_offenders"]["malformed entry"][0].startswith("val/2: ")


def test_stats_cli_on_a_real_layout(cli, tmp_path):
    res = cli("data", "stats", make_refer(tmp_path, GOOD), "--dataset", "refcoco", "--json")
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert st["layout"] == "refer" and st["splits"]["train"]["expressions"] == 1
    assert st["benchmark"] == "RefCOCO (UNC)"
