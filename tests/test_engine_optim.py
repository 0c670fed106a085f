"""Parameter groups (``optim.groups``): per-module lr / weight decay, no-decay halves, schedule, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from langground.config import OptimConfig, ParamGroupConfig, ScheduleConfig
from langground.engine.optim import build_optimizer, build_scheduler, group_lrs, lr_factor
from langground.errors import LanggroundError


class Toy(nn.Module):
    """The LADS / TransVG layout: a backbone, a text encoder and the rest (a head)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 1))
        self.text_encoder = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(16, 2)
        self.backbone[0].requires_grad_(False)  # a frozen stem: in no group

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        v = self.backbone(images).mean((2, 3))
        t = self.text_encoder(tokens).mean(1)
        return self.head(torch.cat([v, t], 1))


LADS = OptimConfig(
    name="adamw",
    lr=1e-4,
    weight_decay=0.05,
    groups=[ParamGroupConfig(params=["backbone.*", "text_encoder.*"], lr=1e-5)],
)


def _names(model: nn.Module, params: list[nn.Parameter]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def _step(model: Toy, opt: torch.optim.Optimizer, sched, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    images, tokens = torch.randn(2, 3, 6, 6, generator=gen), torch.randint(0, 10, (2, 5), generator=gen)
    opt.zero_grad()
    model(images, tokens).square().sum().backward()
    opt.step()
    sched.step()


def test_lads_groups_have_exactly_their_lrs_params_and_decay():
    model = Toy()
    opt = build_optimizer(model, LADS)
    got = [(g["name"], g["lr"], g["weight_decay"], _names(model, g["params"])) for g in opt.param_groups]
    assert got == [
        ("default", 1e-4, 0.05, {"head.weight"}),
        ("default/no_decay", 1e-4, 0.0, {"head.bias"}),
        ("backbone+text_encoder", 1e-5, 0.05, {"backbone.2.weight", "text_encoder.2.weight"}),
        (
            "backbone+text_encoder/no_decay",  # biases, BatchNorm, Embedding and LayerNorm stay exempt
            1e-5,
            0.0,
            {
                "backbone.1.weight",
                "backbone.1.bias",
                "backbone.2.bias",
                "text_encoder.0.weight",
                "text_encoder.1.weight",
                "text_encoder.1.bias",
                "text_encoder.2.bias",
            },
        ),
    ]
    assert group_lrs(opt) == {"default": 1e-4, "backbone+text_encoder": 1e-5}


def test_every_trainable_parameter_in_exactly_one_group():
    model = Toy()
    cfg = OptimConfig(weight_decay=1e-4, groups=[ParamGroupConfig(params=["head.*"]), *LADS.groups])
    params = [p for g in build_optimizer(model, cfg).param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == len({id(p) for p in params}) == len(trainable)
    assert {id(p) for p in params} == {id(p) for p in trainable}
    assert (
        sum(p.numel() for p in params)
        == sum(p.numel() for p in trainable)
        < sum(p.numel() for p in model.parameters())
    )  # the frozen stem is left out


def test_first_matching_group_wins_and_lr_scale_and_decay_override():
    model = Toy()
    cfg = OptimConfig(
        lr=1e-3,
        weight_decay=1e-2,
        groups=[
            ParamGroupConfig(params=["head.*"], lr_scale=2.0, weight_decay=0.0),
            ParamGroupConfig(params=["*.weight"], lr=5e-4),  # head.weight was claimed by the group above
        ],
    )
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    # "*.weight" has no prefix to be named after; the default group keeps only biases: no decayed half
    assert set(groups) == {"default/no_decay", "head", "group1", "group1/no_decay"}
    assert groups["head"]["lr"] == pytest.approx(2e-3) and groups["head"]["weight_decay"] == 0.0
    assert _names(model, groups["head"]["params"]) == {"head.weight", "head.bias"}  # wd 0: no split
    assert _names(model, groups["group1"]["params"]) == {"backbone.2.weight", "text_encoder.2.weight"}
    assert groups["group1"]["lr"] == 5e-4 and groups["group1"]["weight_decay"] == 1e-2
    assert "head.weight" not in _names(model, groups["group1/no_decay"]["params"])
    biases = {"backbone.1.bias", "backbone.2.bias", "text_encoder.1.bias", "text_encoder.2.bias"}
    assert _names(model, groups["default/no_decay"]["params"]) == biases


def test_no_groups_keeps_the_single_default_group():
    model = Toy()
    (group,) = build_optimizer(model, OptimConfig(weight_decay=0.0)).param_groups
    assert group["name"] == "default" and group["lr"] == 1e-4
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters() if p.requires_grad]


def test_schedule_keeps_the_ratio_between_groups_and_resume_keeps_group_lrs():
    torch.manual_seed(0)
    schedule = ScheduleConfig(name="cosine", warmup_epochs=1.0, warmup_start=0.1, min_lr_ratio=0.01)
    total, per_epoch = 12, 4
    model = Toy()
    opt = build_optimizer(model, LADS)
    sched = build_scheduler(opt, schedule, total, per_epoch)
    for k in range(1, 7):
        _step(model, opt, sched, seed=k)
        factor = lr_factor(k, schedule, total, per_epoch)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4 * factor] * 2 + [1e-5 * factor] * 2)
    assert factor < 0.9  # past the warm-up and into the decay: the ratios above were tested off the peak

    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    resumed = copy.deepcopy(model)
    opt2 = build_optimizer(resumed, LADS)
    sched2 = build_scheduler(opt2, schedule, total, per_epoch)
    assert opt2.param_groups[0]["lr"] != opt.param_groups[0]["lr"]  # a fresh schedule starts elsewhere
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    lrs = lambda o: [(g["name"], g["lr"], g["initial_lr"]) for g in o.param_groups]  # noqa: E731
    assert lrs(opt2) == lrs(opt)
    for k in range(7, 10):
        _step(model, opt, sched, seed=k)
        _step(resumed, opt2, sched2, seed=k)
        assert lrs(opt2) == lrs(opt)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_unknown_or_empty_pattern_is_a_one_line_error():
    cfg = OptimConfig(groups=[ParamGroupConfig(params=["head.*"]), ParamGroupConfig(params=["backbnoe.*"])])
    with pytest.raises(
        LanggroundError, match=r"optim\.groups\[1\]\.params: 'backbnoe\.\*' matches no"
    ) as err:
        build_optimizer(Toy(), cfg)
    assert "\n" not in str(err.value) and "'backbone.0.weight'" in str(err.value)
    with pytest.raises(LanggroundError, match=r"optim\.groups\[0\]\.params is empty"):
        build_optimizer(Toy(), OptimConfig(groups=[ParamGroupConfig(params=[])]))
    # a pattern that matches only frozen parameters is no typo: no error, and no group
    frozen = OptimConfig(groups=[ParamGroupConfig(params=["backbone.0.*"], lr=1.0)])
    assert [g["name"] for g in build_optimizer(Toy(), frozen).param_groups] == ["default"]


def test_budget_clock_decays_on_time_when_time_runs_out_before_the_steps():
    cfg = ScheduleConfig(name="cosine", clock="budget", min_lr_ratio=0.1)
    # steps ahead of time: the step count drives the decay, as with clock "steps"
    assert lr_factor(500, cfg, 1000, 100, budget_spent=0.2) == pytest.approx(lr_factor(500, cfg, 1000, 100))
    # time ahead of steps (a slow machine): half the budget spent at step 100 is the cosine's midpoint,
    # and a spent budget is the floor whatever the step
    assert lr_factor(100, cfg, 1000, 100, budget_spent=0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(300, cfg, 1000, 100, budget_spent=1.3) == pytest.approx(0.1)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    spent = [0.0]
    sched = build_scheduler(opt, cfg, 1000, 100, budget_spent=lambda: spent[0])
    spent[0] = 0.999
    sched.step()  # step 1 of 1000, the budget nearly gone
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1, abs=1e-4)


def test_budget_clock_needs_a_time_budget():
    from langground.config import load_preset

    with pytest.raises(LanggroundError, match="schedule.clock.*run.max_minutes"):
        load_preset("synth-laconvnet-t-rec", ["schedule.clock=budget", "run.max_minutes=null"])
