"""Dataclass configs: presets shipped as package data, ``--set a.b=v`` overrides with type checks, YAML."""

from __future__ import annotations

import dataclasses

import pytest

from langground.config import (
    Config,
    ParamGroupConfig,
    RunConfig,
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
        ("loss=3", "config key 'loss' = 3: expected dict[str, any value]"),
        (
            "optim.betas=[0.1, 0.2, 0.3]",
            "config key 'optim.betas' = [0.1, 0.2, 0.3]: expected tuple[float, float]",
        ),
        ("run.epochs=2.0", "config key 'run.epochs' = 2.0: expected int"),
        ("run.ema=1", "config key 'run.ema' = 1: expected bool"),
        ("model.name=null", "config key 'model.name' = None: expected str"),
        (
            "eval.box_match=all",
            "config key 'eval.box_match' = 'all': expected one of 'merged', 'any' or null",
        ),
        (
            "transforms.flip=1",
            "unknown config key 'transforms.flip' (did you mean 'flip_prob'?); valid keys: input_size",
        ),
        ("postprocess.nms_iou=high", "config key 'postprocess.nms_iou' = 'high': expected float"),
        ("optim.groups.x=1", "'optim.groups' is a list[ParamGroupConfig], it has no sub-keys"),
        ("model.kwargs.dims=[8]", None),  # fine alone, a sub-key of a list is not:
        ("model.kwargs.dims=[8]|model.kwargs.dims.x=1", "'model.kwargs.dims' is not a mapping"),
        (
            "optim.groups=[{params: [x], lr: fast}]",
            "config key 'optim.groups[0].lr' = 'fast': expected float or null",
        ),
        (
            "optim.groups=[{parmas: [x]}]",
            "unknown config key 'optim.groups[0].parmas' (did you mean 'params'?)",
        ),
        (
            "optim.groups=[backbone]",
            "config key 'optim.groups[0]' = 'backbone': expected a mapping with keys params, lr",
        ),
        (
            "optim.groups=[{params: []}]",
            "config optim.groups[0].params=[]: expected at least one parameter name pattern",
        ),
        (
            "optim.groups=[{params: [x], lr: 0}]",
            "config optim.groups[0].lr=0.0: expected null or a positive number",
        ),
        (
            "optim.groups=[{params: [x], lr_scale: -1}]",
            "config optim.groups[0].lr_scale=-1.0: expected a positive",
        ),
        ("data.max_queries_per_image=0", "config data.max_queries_per_image=0: expected null or at least 1"),
        ("eval.grec_iou_threshold=1.5", "config eval.grec_iou_threshold=1.5: expected a number in (0, 1]"),
        ("schedule.min_lr_ratio=2", "config schedule.min_lr_ratio=2.0: expected a number in [0, 1]"),
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
    items = item.split("|")
    if expected is None:
        load_preset("synth-laconvnet-t-rec", items)
        return
    with pytest.raises(LanggroundError) as info:
        load_preset("synth-laconvnet-t-rec", items)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert "pydantic" not in message and "Input should" not in message  # the library's text stays inside


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


def test_loss_holds_weights_and_options(tmp_path):
    # ``loss`` is free-form: the task's weights and its options; the task (not the config) checks the names
    cfg = load_preset(
        "synth-laconvnet-t-rec", ["loss.objectness=bce", "loss.giou=2", "loss.center_radius=2.5"]
    )
    assert cfg.loss == {"objectness": "bce", "giou": 2, "center_radius": 2.5}
    user = tmp_path / "loss.yaml"
    user.write_text("base: synth-laconvnet-t-rec\nloss:\n  objectness: bce\n  l1: 1e-4\n")
    loss = load_preset(str(user)).loss
    assert loss == {"objectness": "bce", "l1": 1e-4} and isinstance(loss["l1"], float)  # YAML 1.1 "1e-4"


def test_param_groups_from_yaml_and_from_set(tmp_path):
    user = tmp_path / "groups.yaml"
    user.write_text(
        "base: synth-laconvnet-t-rec\n"
        "optim:\n  groups:\n    - params: [backbone.*, text_encoder.*]\n      lr: 1e-5\n"
        "    - params: [head.*]\n      lr_scale: 2\n      weight_decay: 0\n"
    )
    cfg = load_preset(str(user))
    assert cfg.optim.groups == [
        ParamGroupConfig(params=["backbone.*", "text_encoder.*"], lr=1e-5),
        ParamGroupConfig(params=["head.*"], lr_scale=2.0, weight_decay=0.0),
    ]
    assert all(isinstance(g, ParamGroupConfig) for g in cfg.optim.groups)
    assert isinstance(cfg.optim.groups[1].lr_scale, float) and isinstance(
        cfg.optim.groups[1].weight_decay, float
    )
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg
    # --set replaces the whole list (the shell quotes of --set optim.groups='[...]' are gone by then)
    over = apply_overrides(cfg, ["optim.groups=[{params: [backbone.*], lr: 1.0e-5}]"])
    assert over.optim.groups == [ParamGroupConfig(params=["backbone.*"], lr=1e-5)]
    assert apply_overrides(cfg, ["optim.groups=[]"]).optim.groups == []


def test_new_data_fields():
    cfg = load_preset("synth-laconvnet-t-rec", ["data.group_by_image=true", "data.max_queries_per_image=8"])
    assert cfg.data.group_by_image is True and cfg.data.max_queries_per_image == 8
    cfg = load_preset("synth-laconvnet-t-rec", ["data.max_queries_per_image=null"])
    assert cfg.data.max_queries_per_image is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run:\n  epochs: true\n", "config key 'run.epochs' = True: expected int"),
        ("run:\n  epochs: '3'\n", "config key 'run.epochs' = '3': expected int"),
        ("run: 5\n", "config key 'run' = 5: expected a mapping with keys epochs, max_steps"),
        ("data:\n  train_split: 2014\n", "config key 'data.train_split' = 2014: expected str"),
        ("optim:\n  betas: 0.9\n", "config key 'optim.betas' = 0.9: expected tuple[float, float]"),
        (
            "transforms:\n  input_sise: 320\n",
            "unknown config key 'transforms.input_sise' (did you mean 'input_size'?)",
        ),
        (
            "optimizer:\n  lr: 1\n",
            "unknown config key 'optimizer' (did you mean 'optim'?); valid keys: name, description",
        ),
    ],
)
def test_yaml_files_are_checked_strictly(tmp_path, text, expected):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(LanggroundError) as info:
        load_preset(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_config_from_dict_takes_plain_data_and_sections():
    cfg = config_from_dict({"run": RunConfig(epochs=3), "optim": {"betas": (0.5, 0.6), "lr": 1}})
    assert cfg.run == RunConfig(epochs=3) and cfg.optim.betas == (0.5, 0.6)
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert config_to_dict(cfg)["optim"]["betas"] == [0.5, 0.6]  # YAML-ready: lists, not tuples
    with pytest.raises(LanggroundError, match=r"^mine: config holds a value that is not plain data"):
        config_from_dict({"model": {"kwargs": {"f": object()}}}, "mine")
    with pytest.raises(LanggroundError, match=r"^mine: expected a mapping of config sections, got list"):
        config_from_dict([], "mine")  # type: ignore[arg-type]
