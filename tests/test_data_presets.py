"""Every shipped preset loads and validates; the benchmark presets follow LaConvNet's recipe (§5.2)
and name a registered dataset, a task and split names that dataset's protocol has."""

from __future__ import annotations

import pytest

from langground.config import list_presets, load_preset
from langground.data import dataset_spec
from langground.registry import is_model

# benchmark -> the LaConvNet-S presets that train on it
BENCHMARK_PRESETS = {
    "RefCOCO": ["refcoco-laconvnet-s-rec", "refcoco-laconvnet-s-res"],
    "RefCOCO+": ["refcoco+-laconvnet-s-rec", "refcoco+-laconvnet-s-res"],
    "RefCOCOg": ["refcocog-laconvnet-s-rec", "refcocog-laconvnet-s-res"],
    "ReferIt": ["referit-laconvnet-s-rec"],
    "Flickr30k": ["flickr30k-laconvnet-s-rec"],
    "gRefCOCO": ["grefcoco-laconvnet-s-gres"],
    "CLEVR-Ref+": ["clevr-ref+-laconvnet-s-res"],
    "CLEVR": ["clevr-laconvnet-s-vqa"],
}
PAPER_SIZE = {"rec": 416, "res": 320, "gres": 320, "vqa": 224}  # LaConvNet §5.2 (RES size for gRefCOCO)


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_loads(name):
    cfg = load_preset(name)
    assert cfg.name == name and cfg.description == list_presets()[name] and cfg.description
    assert is_model(cfg.model.name)
    p = dataset_spec(cfg.data.dataset).protocol  # a registered dataset name
    assert cfg.model.task in p.tasks, (name, cfg.model.task, p.tasks)
    assert {cfg.data.train_split, cfg.data.val_split, *cfg.data.test_splits} <= set(p.splits)
    # every split the papers report is evaluated (during training or with the best weights at the end)
    assert set(p.eval_splits) <= {cfg.data.val_split, *cfg.data.test_splits}


@pytest.mark.parametrize("name", [n for names in BENCHMARK_PRESETS.values() for n in names])
def test_benchmark_presets_use_the_paper_recipe(name):
    cfg = load_preset(name)
    assert cfg.model.name == "laconvnet_s"
    assert (cfg.optim.name, cfg.optim.lr) == ("adam", 1e-4)
    assert cfg.transforms.input_size == PAPER_SIZE[cfg.model.task]
    assert cfg.schedule.warmup_epochs == 3
    if cfg.data.dataset in ("clevr", "clevr-ref+"):
        # 23 epochs, lr x0.2 at the 20th and 22nd (from scratch)
        assert (cfg.run.epochs, cfg.schedule.name, cfg.schedule.milestones, cfg.schedule.gamma) == (
            23,
            "multistep",
            [20.0, 22.0],
            0.2,
        )
        assert cfg.transforms.crop_prob == 0.0
    else:
        assert (cfg.run.epochs, cfg.schedule.name) == (25, "cosine")  # 25 epochs, 3 warm-up, cosine


def test_each_benchmark_of_the_papers_has_a_preset():
    names = set(list_presets())
    for benchmark, presets in BENCHMARK_PRESETS.items():
        assert set(presets) <= names, benchmark
    assert load_preset("referit-laconvnet-s-rec").data.dataset == "refclef-berkeley"
    assert load_preset("flickr30k-laconvnet-s-rec").data.dataset == "flickr30k"  # merged boxes
    assert load_preset("refcocog-laconvnet-s-rec").data.test_splits == ["test"]


def test_a_preset_can_switch_layout_by_override():
    cfg = load_preset("referit-laconvnet-s-rec", ["data.dataset=simrec-referit", "data.root=data/simrec"])
    assert dataset_spec(cfg.data.dataset).protocol.benchmark == "ReferItGame"
