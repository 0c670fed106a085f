"""CLEVR v1.0 VQA layout: ``questions/CLEVR_{split}_questions.json``, images ``images/{split}/``.

Questions carry ``question``, ``answer`` (a string, absent on test), ``program`` (``function`` /
``inputs`` / ``value_inputs``) and ``question_family_index``; accuracy is reported per question type.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langground.data import dataset_spec, open_dataset
from langground.data.stats import dataset_stats


def fn(function: str, inputs: list[int], values: list[str] = ()) -> dict:
    return {"inputs": inputs, "function": function, "value_inputs": list(values)}


def question(i: int, split: str, text: str, program: list[dict], answer: str | None, family: int) -> dict:
    q = {
        "image_index": i // 2,
        "program": program,
        "question_index": i,
        "image_filename": f"CLEVR_{split}_{i // 2:06d}.png",
        "question_family_index": family,
        "split": split,
        "question": text,
    }
    if answer is not None:
        q["answer"] = answer
    return q


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clevr")
    (root / "questions").mkdir()
    count = [fn("scene", []), fn("filter_color", [0], ["red"]), fn("count", [1])]
    exist = [fn("scene", []), fn("filter_shape", [0], ["sphere"]), fn("exist", [1])]
    query = [fn("scene", []), fn("filter_size", [0], ["large"]), fn("unique", [1]), fn("query_color", [2])]
    compare = [
        fn("scene", []),
        fn("count", [0]),
        fn("scene", []),
        fn("count", [2]),
        fn("greater_than", [1, 3]),
    ]
    for split, with_answers in (("val", True), ("test", False)):
        qs = [
            question(0, split, "How many red things are there?", count, "2", 11),
            question(1, split, "Are there any spheres?", exist, "yes", 3),
            question(2, split, "What color is the large thing?", query, "cyan", 25),
            question(3, split, "Are there more cubes than balls?", compare, "no", 7),
        ]
        if not with_answers:
            for q in qs:
                q.pop("answer")
        (root / "questions" / f"CLEVR_{split}_questions.json").write_text(
            json.dumps({"info": {"split": split, "version": "1.0"}, "questions": qs})
        )
    return root


def test_questions_answers_programs_and_types(root):
    ds = open_dataset(root, "clevr", "val")
    assert ds.protocol == dataset_spec("clevr").protocol and ds.task == "vqa" and len(ds) == 4
    r = ds[0]
    assert (r.sample_id, r.text, r.answer, r.family, r.split) == (
        "0",
        "How many red things are there?",
        "2",
        "11",
        "val",
    )
    assert r.boxes.shape == (0, 4) and r.mask_loader is None and r.image_id == 0
    assert r.program == [
        {"function": "scene", "inputs": [], "value_inputs": []},
        {"function": "filter_color", "inputs": [0], "value_inputs": ["red"]},
        {"function": "count", "inputs": [1], "value_inputs": []},
    ]
    assert r.image_size == (320, 480) and r.image_path.endswith("images/val/CLEVR_val_000000.png")
    assert [x.meta["question_type"] for x in ds] == ["count", "exist", "query_attribute", "compare_number"]
    assert [x.answer for x in ds] == ["2", "yes", "cyan", "no"]


def test_test_split_has_no_answers(root):
    ds = open_dataset(root, "clevr", "test")
    assert [r.answer for r in ds] == [None] * 4 and ds[3].image_path.endswith("CLEVR_test_000001.png")


def test_stats(root):
    st = dataset_stats(open_dataset(root, "clevr", "all"))
    assert st["splits"]["val"]["questions"] == 4 and st["splits"]["val"]["images"] == 2
    assert st["answers"] == {"2": 1, "yes": 1, "cyan": 1, "no": 1}
    assert st["families"]["11"] == {"test": 1, "val": 1}
