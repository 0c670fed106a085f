"""Dataclass configs: presets shipped as package data, ``--set a.b=v`` overrides with type checks, YAML."""

from __future__ import annotations

import dataclasses

import pytest

from langground.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    load_preset,
    save_config,
)
from langground.errors import LanggroundError

ISSUE_PRESETS = (
    "synth-laconvnet-t-rec",
    "synth-laconvnet-t-res",
    "synth-laconvnet-t-vqa",
    "synth-laconvnet-t-gref",
    "refcoco-laconvnet-s-rec",
    "refcoco-laconvnet-b-rec",
)


def test_every_shipped_preset_loads_and_validates():
    presets = list_presets()
    assert set(ISSUE_PRESETS) <= set(presets)
    assert list(presets) == sorted(presets)
    for name, description in presets.items():
        cfg = load_preset(name)
        assert isinstance(cfg, Config) and cfg.name == name and description
        assert cfg.description == description


def test_presets_inherit_from_their_base():
    rec, res = load_preset("synth-laconvnet-t-rec"), load_preset("synth-laconvnet-t-res")
    vqa, gref = load_preset("synth-laconvnet-t-vqa"), load_preset("synth-laconvnet-t-gref")
    assert (res.model.task, vqa.model.task, gref.model.task) == ("res", "vqa", "gref")
    assert vqa.data.open_kwargs == {"task": "vqa"} and gref.data.open_kwargs == {"task": "gref"}
    assert vqa.transforms.crop_prob == 0.0 and vqa.transforms.input_size == rec.transforms.input_size
    # everything not overridden comes from the base
    assert res.optim == rec.optim and res.run == rec.run and res.schedule == rec.schedule


@pytest.mark.parametrize(
    ("name", "model", "task", "size"),
    [
        ("refcoco-laconvnet-s-rec", "laconvnet_s", "rec", 416),
        ("refcoco-laconvnet-b-rec", "laconvnet_b", "rec", 416),
        ("refcoco-laconvnet-s-res", "laconvnet_s", "res", 320),
    ],
)
def test_paper_presets_have_the_paper_schedule(name, model, task, size):
    cfg = load_preset(name)
    assert (cfg.model.name, cfg.model.task, cfg.transforms.input_size) == (model, task, size)
    assert cfg.optim.name == "adam" and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_epochs == 3 and cfg.run.epochs == 25
    assert cfg.run.ema and cfg.run.clip_grad_norm is not None and cfg.run.clip_grad_norm > 0


def test_overrides_are_typed():
    cfg = load_preset(
        "synth-laconvnet-t-rec",
        [
            "run.epochs=3",
            "optim.lr=1e-4",  # YAML 1.1 reads this as a string: still a float
            "run.clip_grad_norm=null",
            "data.val_split=null",
            "data.train_split=2014",  # a str field keeps the text
            "optim.betas=[0.8, 0.9]",
            "optim.name=sgd",
            "run.amp=bf16",
            "model.kwargs.dims=[8, 16, 16, 32, 32]",
            "data.synth.size=[96, 72]",
            "loss.giou=1.5",
            "run.ema=false",
        ],
    )
    assert cfg.run.epochs == 3 and isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1e-4
    assert cfg.run.clip_grad_norm is None and cfg.data.val_split is None
    assert cfg.data.train_split == "2014"
    assert cfg.optim.betas == (0.8, 0.9) and cfg.optim.name == "sgd" and cfg.run.amp == "bf16"
    assert cfg.model.kwargs["dims"] == [8, 16, 16, 32, 32] and cfg.data.synth["size"] == [96, 72]
    assert cfg.data.synth["images"] == 2000  # the other synth keys stay
    assert cfg.loss == {"giou": 1.5} and cfg.run.ema is False
    # the preset itself is untouched by overrides of a loaded copy
    assert load_preset("synth-laconvnet-t-rec").run.epochs == 5


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("run.epoch=3", "unknown config key 'run.epoch' (did you mean 'epochs'?)"),
        ("runn.epochs=3", "unknown config key 'runn'"),
        ("run.epochs=abc", "config key 'run.epochs' = 'abc': expected int"),
        ("run.epochs=2.5", "expected int"),
        ("run.batch_size=true", "expected int"),
        ("run.ema=maybe", "expected bool"),
        ("optim.lr=fast", "expected float"),
        ("optim.name=rmsprop", "expected one of 'adam', 'adamw', 'sgd'"),
        ("optim.betas=[0.9]", "expected tuple[float, float]"),
        ("data.test_splits=testA", "expected list[str]"),
        ("loss.giou=heavy", "config key 'loss.giou' = 'heavy': expected float"),
        ("run.epochs.x=1", "'run.epochs' is a int, it has no sub-keys"),
        ("run.epochs", "expected KEY=VALUE"),
        ("run..epochs=1", "malformed key"),
        ("run.batch_size=0", "config run.batch_size=0: expected at least 1"),
        ("run.num_workers=-1", "config run.num_workers=-1: expected >= 0"),
        ("transforms.input_size=100", "expected a multiple of 32"),
        ("model.task=detect", "config model.task='detect'"),
    ],
)
def test_bad_overrides_are_one_line_errors(item, expected):
    with pytest.raises(LanggroundError) as info:
        load_preset("synth-laconvnet-t-rec", [item])
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(LanggroundError, match="unknown preset 'nope'; presets: .*synth-laconvnet-t-rec"):
        load_preset("nope")


def test_yaml_round_trip_and_user_files(tmp_path):
    cfg = load_preset("refcoco-laconvnet-s-rec", ["run.epochs=7", "data.synth.images=5"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert not list(tmp_path.glob(".config-*"))  # the temp file was renamed
    # a user YAML file with a base preset
    user = tmp_path / "mine.yaml"
    user.write_text("base: synth-laconvnet-t-rec\nrun:\n  epochs: 2\n")
    mine = load_preset(str(user))
    assert mine.run.epochs == 2 and mine.model.name == "laconvnet_t"
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  epochs: [1\n")
    with pytest.raises(LanggroundError, match=r"bad.yaml: not valid YAML"):
        load_preset(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("run:\n  epoks: 2\n")
    with pytest.raises(LanggroundError, match=r"typo.yaml: unknown config key 'run.epoks'"):
        load_preset(str(typo))
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(LanggroundError, match="makes a cycle"):
        load_preset(str(loop))


def test_apply_overrides_returns_a_copy():
    cfg = Config()
    out = apply_overrides(cfg, ["run.epochs=1"])
    assert out.run.epochs == 1 and cfg.run.epochs == 10
    assert dataclasses.replace(cfg) == cfg
