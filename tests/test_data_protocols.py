"""Every registered dataset records how its papers evaluate it (metric, resolution, split names), and
the metric names are keys the evaluator really computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from langground.data import DatasetProtocol, dataset_spec, list_datasets
from langground.engine.metrics import Evaluator
from langground.tasks import get_task, list_tasks
from langground.types import GroundingRecord, Phrase, Prediction

UNC = ("train", "val", "testA", "testB")

# name prefix -> (tasks, input size per task, official splits, reported splits, box protocol)
EXPECTED = {
    "refcoco": (("rec", "res"), {"rec": 416, "res": 320}, UNC, ("val", "testA", "testB"), "single"),
    "refcoco+": (("rec", "res"), {"rec": 416, "res": 320}, UNC, ("val", "testA", "testB"), "single"),
    "refcocog": (
        ("rec", "res"),
        {"rec": 416, "res": 320},
        ("train", "val", "test"),
        ("val", "test"),
        "single",
    ),
    "refcocog-google": (("rec", "res"), {"rec": 416, "res": 320}, ("train", "val"), ("val",), "single"),
    "referit": (("rec",), {"rec": 416}, ("train", "val", "test"), ("test",), "single"),
    "grefcoco": (("gres", "gref"), {"gres": 480, "gref": 480}, UNC, ("val", "testA", "testB"), "all"),
    "flickr30k": (
        ("rec", "phrase"),
        {"rec": 416, "phrase": 416},
        ("train", "val", "test"),
        ("val", "test"),
        "merged",
    ),
    "flickr30k-separate": (
        ("rec", "phrase"),
        {"rec": 416, "phrase": 416},
        ("train", "val", "test"),
        ("val", "test"),
        "any",
    ),
    "clevr-ref+": (("res", "rec"), {"res": 320, "rec": 416}, ("train", "val", "test"), ("val",), "merged"),
    "clevr": (("vqa",), {"vqa": 224}, ("train", "val", "test"), ("val",), "single"),
}
# which benchmark each registered name reads (layouts differ, the benchmark does not)
BENCHMARK_OF = {
    "refcoco": "refcoco", "mdetr-refcoco": "refcoco", "simrec-refcoco": "refcoco", "transvg-unc": "refcoco",
    "refcoco+": "refcoco+", "mdetr-refcoco+": "refcoco+", "simrec-refcoco+": "refcoco+", "transvg-unc+": "refcoco+",
    "refcocog": "refcocog", "mdetr-refcocog": "refcocog", "simrec-refcocog": "refcocog", "transvg-gref_umd": "refcocog",
    "refcocog-google": "refcocog-google", "transvg-gref": "refcocog-google",
    "refclef-berkeley": "referit-berkeley", "transvg-referit": "referit", "simrec-referit": "referit",
    "refclef": "refclef-unc",
    "grefcoco": "grefcoco",
    "flickr30k": "flickr30k", "transvg-flickr": "flickr30k", "simrec-flickr": "flickr30k",
    "flickr30k-separate": "flickr30k-separate",
    "clevr-ref+": "clevr-ref+", "clevr": "clevr", "synth": "synth",
    "coco-karpathy": "coco-karpathy", "flickr30k-karpathy": "flickr30k-karpathy",
    "synth-captions": "synth-captions",
}  # fmt: skip
RETRIEVAL_SPLITS = ("train", "val", "test")
for _name in ("coco-karpathy", "flickr30k-karpathy"):  # ALBEF / BLIP fine-tune retrieval at 384
    EXPECTED[_name] = (("retrieval",), {"retrieval": 384}, RETRIEVAL_SPLITS, ("val", "test"), "single")
EXPECTED["referit-berkeley"] = (
    ("rec", "res"),
    {"rec": 416, "res": 320},
    ("train", "val", "test"),
    ("test",),
    "single",
)
EXPECTED["refclef-unc"] = (
    ("rec", "res"),
    {"rec": 416, "res": 320},
    ("train", "val", "testA", "testB", "testC"),
    ("testA", "testB"),
    "single",
)

for _name in ("refcoco", "refcoco+", "refcocog", "refcocog-google", "referit-berkeley", "refclef-unc"):
    _tasks, _sizes, *_rest = EXPECTED[_name]  # + recres (RefTR: REC and RES from one model) at 640
    EXPECTED[_name] = ((*_tasks, "recres"), {**_sizes, "recres": 640}, *_rest)


def test_every_registered_dataset_is_covered_here():
    assert set(list_datasets()) == set(BENCHMARK_OF)


@pytest.mark.parametrize("name", sorted(BENCHMARK_OF))
def test_protocol_of_each_dataset(name):
    p = dataset_spec(name).protocol
    assert isinstance(p, DatasetProtocol) and p.benchmark
    assert set(p.tasks) <= set(list_tasks()) and set(p.metrics) == set(p.tasks)
    assert set(p.eval_splits) <= set(p.splits)
    if name == "synth":  # no paper resolution to record: the presets choose
        assert p.tasks == ("rec", "res", "gref", "gres", "vqa", "recres", "phrase")
        assert p.input_size == {} and " at " not in p.describe("rec")
        return
    if name == "synth-captions":  # the synthetic world's scene captions: retrieval only, presets choose sizes
        assert (
            p.tasks == ("retrieval",)
            and p.input_size == {}
            and p.metrics["retrieval"][0] == "retrieval/r@1_t2i"
        )
        return
    assert set(p.input_size) == set(p.tasks)
    tasks, sizes, splits, eval_splits, box_match = EXPECTED[BENCHMARK_OF[name]]
    assert (p.tasks, dict(p.input_size), p.splits, p.eval_splits, p.box_match) == (
        tasks,
        sizes,
        splits,
        eval_splits,
        box_match,
    )
    first = {
        "rec": "rec/prec@0.5",
        "res": "res/oiou",
        "gres": "gres/ciou",
        "gref": "grec/prec@f1",
        "vqa": "vqa/acc",
        "recres": "rec/prec@0.5",
        "phrase": "phrase/recall@1",
        "retrieval": "retrieval/r@1_t2i",
    }
    for task in p.tasks:
        assert p.metrics[task][0] == first[task]  # the headline number of the papers' tables
    line = p.describe()
    assert p.benchmark in line and f"{sizes[tasks[0]]}x{sizes[tasks[0]]}" in line and "eval splits" in line
    if name.startswith("transvg-"):
        assert "TransVG" in p.notes


def _metric_keys() -> set[str]:
    """What the evaluator reports when it sees a target, a no-target and a question."""
    ev = Evaluator(["rec", "res", "gres", "gref", "vqa"])
    m = np.zeros((8, 8), np.uint8)
    m[:4, :4] = 1
    target = GroundingRecord("1", 1, "x.jpg", (8, 8), "a", boxes=np.array([[0, 0, 4, 4]], np.float32))
    none = GroundingRecord("2", 1, "x.jpg", (8, 8), "b", no_target=True)
    question = GroundingRecord("3", 1, "x.jpg", (8, 8), "c?", answer="yes")
    hit = Prediction(
        np.array([[0, 0, 4, 4]], np.float32), np.array([0.9], np.float32), mask=m.astype(bool), no_target=0.0
    )
    empty = Prediction(
        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), mask=np.zeros((8, 8), bool), no_target=1.0
    )
    ev.update(target, hit, m)
    ev.update(none, empty, np.zeros((8, 8), np.uint8))
    ev.update(question, Prediction(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), answer="yes"))
    caption = GroundingRecord("4", 1, "x.jpg", (8, 8), "a b", phrases=(Phrase((0, 1), target.boxes),))
    list_tasks()  # registers the tasks' metric families (phrase's lives with its task)
    phrase = Evaluator(["phrase"])
    phrase.update(caption, Prediction(hit.boxes, hit.scores, phrases=[hit]), None)
    gallery = get_task("retrieval").output_scorer(None)  # split-level: the gallery's R@K both ways
    gallery.update(
        [caption],
        {"pred_text_embed": torch.ones(1, 2), "pred_image_embed": torch.ones(1, 2)},
        None,
    )
    return set(ev.compute()) | set(phrase.compute()) | set(gallery.compute())


def test_protocol_metrics_are_keys_the_evaluator_computes():
    keys = _metric_keys()
    for name in list_datasets():
        for task, metrics in dataset_spec(name).protocol.metrics.items():
            assert set(metrics) <= keys, (name, task, set(metrics) - keys)
