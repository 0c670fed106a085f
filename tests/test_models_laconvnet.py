"""LaConvNet specifics: Table 1 layout, the released code's choices the paper does not give, documented
variants, Tab. 10 budgets of the ablation switches, ablations on every task, attention maps, config rebuild.
(Overfitting: tests/test_models_registry_sweep.py; sources of every choice: docs/fidelity.md.)"""

import re

import pytest
import torch

from langground.errors import LanggroundError
from langground.layers import FiLMBlock, LaConvBlock, LanguageKernelGenerator, QGHCBlock
from langground.losses import build_criterion
from langground.models import laconvnet as laconvnet_module
from langground.models.laconvnet import LaConvNet
from langground.registry import create_model
from langground.types import Targets, TextBatch


def _text(ids):
    ids = torch.tensor(ids)
    return TextBatch(ids, ids != 0)


def test_table1_layout_of_s_and_b():
    """Table 1: blocks per stage (10 / 19), widths, packing s; kernels 3x3 then 7x7 (Table 1, Tab. 10's
    "kernels=[3,7,7,7,7]"); Sec. 5.2: 512-d language encoder, inputs 416 / 320 / 224 for REC / RES / VQA."""
    for name, depths in (("laconvnet_s", [2, 1, 2, 4, 1]), ("laconvnet_b", [3, 3, 4, 6, 3])):
        m = create_model(name)
        bb = m.backbone
        assert [len(s) for s in bb.stages] == depths
        assert sum(depths) == (10 if name == "laconvnet_s" else 19)
        for i, stage in enumerate(bb.stages):
            for block in stage:
                gen = block.laconv.generator
                assert block.mlp.fc1.conv.out_channels == 4 * [16, 64, 128, 256, 512][i]  # Eq. 6: d -> 4d
                assert gen.packing == [8, 4, 2, 1, 1][i]
                assert gen.kernel_size == [3, 7, 7, 7, 7][i]
        assert m.input_size == 416 and m.text_encoder.rnn.hidden_size == 512
    assert create_model("laconvnet_s", task="res").input_size == 320
    assert create_model("laconvnet_s", task="vqa", num_answers=28).input_size == 224


def test_released_code_choices_the_paper_does_not_give():
    """From the authors' code, not the paper (docs/fidelity.md): kernel groups 4/4/8/8/16
    (models/visual_encoder.py ``LaConvNet(groups=...)``; Table 1 has no groups), kernel dropout 0.1
    (layers/laconv.py ``LaConv(weight_dropout=0.1)``), g = ReLU(BN) and a sine position embedding in the
    kernel generator (``ParameterGenerator``). Ours instead of the code: contiguous channel groups (Eq. 2's
    split; the code's SAN kernel interleaves) and an attention width of max(d, 128)."""
    from langground.layers import PositionEmbeddingSine2d

    for name in ("laconvnet_s", "laconvnet_b"):
        m = create_model(name)
        for i, stage in enumerate(m.backbone.stages):
            for block in stage:
                gen = block.laconv.generator
                assert gen.groups == [4, 4, 8, 8, 16][i]
                assert block.laconv.kernel_dropout == 0.1
                assert isinstance(gen.norm, torch.nn.BatchNorm2d) and isinstance(gen.act, torch.nn.ReLU)
                assert isinstance(gen.pos, PositionEmbeddingSine2d)
                assert not block.laconv.dynamic.interleaved
                assert gen.num_heads * gen.head_dim == max([16, 64, 128, 256, 512][i], 128)
    m = create_model("laconvnet_s", interleaved_groups=True, attn_min_dim=16)
    assert all(b.laconv.dynamic.interleaved for s in m.backbone.stages for b in s)
    assert [s[0].laconv.generator.num_heads * s[0].laconv.generator.head_dim for s in m.backbone.stages] == [
        16,
        64,
        128,
        256,
        512,
    ]


def test_stage_strides_and_attention_maps_per_word():
    torch.manual_seed(0)
    m = create_model("laconvnet_t", vocab_size=20, input_size=128).eval()
    text = _text([[2, 3, 4, 0], [5, 6, 7, 8]])
    feats, _ = m.backbone(torch.randn(2, 3, 128, 128), torch.randn(2, 4, 128), text.attention_mask)
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4]
    with torch.no_grad():
        out = m(torch.randn(2, 3, 128, 128), text)
    att = out["aux"]["attention"]
    assert list(att) == ["stage1", "stage2", "stage3", "stage4", "stage5"]
    assert att["stage1"].shape == (2, 4, 8, 8)  # 64 / packing 8
    assert att["stage5"].shape == (2, 4, 4, 4)
    for a in att.values():
        assert torch.allclose(a.sum(1), torch.ones_like(a[:, 0]), atol=1e-5)
        assert a[0, 3].abs().max() == 0  # padding gets no attention


def test_ablation_switches():
    base = create_model("laconvnet_s")
    no_pack = create_model("laconvnet_s", pixel_packing=False)
    assert all(b.laconv.generator.packing == 1 for s in no_pack.backbone.stages for b in s)
    lang = create_model("laconvnet_s", language_only=True)
    assert all(
        isinstance(b.laconv.generator, LanguageKernelGenerator) for s in lang.backbone.stages for b in s
    )
    g1 = create_model("laconvnet_s", groups=1)
    assert all(b.laconv.generator.groups == 1 for s in g1.backbone.stages for b in s)
    k3 = create_model("laconvnet_s", kernel_size=3)
    assert all(b.laconv.generator.kernel_size == 3 for s in k3.backbone.stages for b in s)
    for block, cls in (("laconv", LaConvBlock), ("film", FiLMBlock), ("qghc", QGHCBlock)):
        m = create_model("laconvnet_t", block=block)
        assert all(isinstance(b, cls) for s in m.backbone.stages for b in s)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    # Tab. 10: removing packing or the condition matrix both shrink the model
    assert count(no_pack) < count(base) and count(lang) < count(base)


def test_bad_options_are_clear_errors():
    with pytest.raises(LanggroundError, match="unknown LaConvNet option"):
        create_model("laconvnet_t", widht=3)
    with pytest.raises(LanggroundError, match="needs 5 values"):
        create_model("laconvnet_t", depths=(1, 2))
    with pytest.raises(LanggroundError, match="unknown block"):
        create_model("laconvnet_t", block="conv")
    with pytest.raises(LanggroundError, match="num_answers"):
        create_model("laconvnet_t", task="vqa")
    with pytest.raises(LanggroundError, match="multiple of 32"):
        create_model("laconvnet_t", input_size=100)
    with pytest.raises(LanggroundError, match="unknown task"):
        create_model("laconvnet_t", task="detect")


def test_model_config_rebuilds_the_same_architecture():
    m = create_model("laconvnet_t", task="gres", vocab_size=33, block="qghc", groups=2, input_size=96)
    again = create_model("laconvnet_t", **m.model_config)
    assert isinstance(again, LaConvNet) and again.model_config == m.model_config
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in m.named_parameters()]
    import yaml

    assert yaml.safe_load(yaml.safe_dump(m.model_config)) == m.model_config


@pytest.mark.parametrize("name", ["laconvnet_s", "laconvnet_b"])
def test_table1_widths_and_strides(name):
    """Stride-2 stem, then stages at strides 2/4/8/16/32 with widths 16/64/128/256/512 (Table 1)."""
    torch.manual_seed(0)
    m = create_model(name, vocab_size=20, input_size=64).eval()
    bb = m.backbone
    assert bb.stem.conv.stride == (2, 2) and bb.stem.conv.out_channels == 16
    for i, down in enumerate(bb.downsample[1:], 1):  # "2x2, stride 2 pool" between stages
        assert down.conv.kernel_size == (2, 2) and down.conv.stride == (2, 2)
        assert (down.conv.in_channels, down.conv.out_channels) == (bb.dims[i - 1], bb.dims[i])
    text = _text([[2, 3, 4, 0]])
    with torch.no_grad():
        feats, maps = bb(torch.randn(1, 3, 64, 64), torch.randn(1, 4, 512), text.attention_mask)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (16, 32, 32),
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
    ]
    # A of the last block of every stage, at the packed resolution H/s (s = 8/4/2/1/1)
    assert [tuple(a.shape[-2:]) for a in maps.values()] == [(4, 4), (4, 4), (4, 4), (4, 4), (2, 2)]


def test_variant_table_in_the_docstring_is_what_the_registry_builds():
    """The documented widths/packing/groups/kernels/blocks (incl. the tiny variant) match the models."""
    doc = laconvnet_module.__doc__
    rows = re.findall(r"^(laconvnet_[tsb])\s+(.+)$", doc, flags=re.M)
    assert {r[0] for r in rows} == {"laconvnet_t", "laconvnet_s", "laconvnet_b"}
    for name, rest in rows:
        fields = re.findall(r"\d+(?:\s*/\s*\d+){4}", rest)
        dims, packing, groups, kernels, depths = ([int(v) for v in f.split("/")] for f in fields)
        cfg = create_model(name).config
        assert (cfg.dims, cfg.packing, cfg.groups, cfg.kernel_size, cfg.depths) == (
            dims,
            packing,
            groups,
            kernels,
            depths,
        ), name
    assert create_model("laconvnet_t").input_size == 256  # trains on CPU at <= 256^2


ABLATIONS = {
    "no_pixel_packing": {"pixel_packing": False},
    "language_only": {"language_only": True},
    "group1": {"groups": 1},
    "kernel3": {"kernel_size": 3},
    "film": {"block": "film"},
    "qghc": {"block": "qghc"},
}


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_builds_runs_and_trains_on_every_task(ablation):
    """Tab. 10-11 switches: every task runs, has finite outputs, and every parameter gets a gradient."""
    ids = torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0]])
    text = TextBatch(ids, ids != 0)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 16:40, 8:48] = 1
    targets = Targets(
        [torch.tensor([[0.4, 0.45, 0.6, 0.4]]), torch.tensor([[0.6, 0.3, 0.2, 0.3]])],
        masks,
        torch.zeros(2, dtype=torch.bool),
        torch.tensor([1, 3]),
    )
    for task in LaConvNet.supported_tasks:
        torch.manual_seed(0)
        m = create_model(
            "laconvnet_t", task=task, vocab_size=10, num_answers=4, input_size=64, **ABLATIONS[ablation]
        )
        out = m.train()(images, text)
        losses = build_criterion(task)(out, targets)
        assert torch.isfinite(losses["loss"]), (ablation, task)
        losses["loss"].backward()
        missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (ablation, task, missing[:5])
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        has_maps = bool(out["aux"]["attention"])
        assert has_maps == (ablation not in ("language_only", "film", "qghc")), (ablation, task)


# ----------------------------------------------------------------------------- Tab. 10 budgets

# Tab. 10 (LaConvNet-S, REC, 416^2): (params, FLOPs) of each ablation, rounded to 1M / 0.1G; the paper's
# "FLOPs" are multiply-accumulates (docs/fidelity.md).
TAB10 = {
    "group=1": ({"groups": 1}, 22e6, 8.0e9),
    "kernel=3": ({"kernel_size": 3}, 22e6, 8.1e9),
    "no pixel packing": ({"pixel_packing": False}, 22e6, 9.1e9),
    "language only": ({"language_only": True}, 19e6, 6.4e9),
}
# Relative MAC tolerance against the paper, per ablation: each is tighter than the ablation's own effect
# on our model (measured: 7.7%, 7.9%, 4.3%, 22.9% of the base's 8.79 GMACs), so the unmodified base fails
# every expectation. "language only" gets more room: Tab. 10 does not say how its kernels are predicted.
MACS_TOL = {"group=1": 0.02, "kernel=3": 0.02, "no pixel packing": 0.02, "language only": 0.07}
LANG_HIDDEN = 256  # LanguageKernelGenerator's MLP width (ours)


def _blocks(cfg, size):
    """(d, t, k, g, s, A, HW) for every LaConv block of ``cfg`` at ``size``^2 (stage 1 at stride 2)."""
    side = size // 2
    for i in range(5):
        d, k, g, s = cfg.dims[i], cfg.kernel_size[i], cfg.groups[i], cfg.packing[i]
        for _ in range(cfg.depths[i]):
            yield d, cfg.text_dim, k, g, s, max(d, cfg.attn_min_dim), side * side
        side //= 2


def _generator_budget(d, t, k, g, s, a, hw, words):
    """Params and MACs of phi from its shapes (Eq. 3-4, Sec. 3.2): W_X on HW/s^2 tokens of d*s^2 (+ bias),
    W_Y and W_A on the words (+ biases), QK^T and AV, W_C back to d*s^2 per token, BN, W_1 and b_1."""
    params = (d * s * s * a + a) + 2 * (t * a + a) + a * d * s * s + 2 * d + (d + 1) * k * k * g
    macs = hw * d * a + 2 * words * t * a + 2 * (hw // (s * s)) * words * a + hw * a * d + hw * d * k * k * g
    return params, macs


def _budget_delta(ablation, cfg, size, words):
    """(params, MACs) an ablation adds to the base model, from the shapes alone."""
    dp = dm = 0
    for d, t, k, g, s, a, hw in _blocks(cfg, size):
        p0, m0 = _generator_budget(d, t, k, g, s, a, hw, words)
        if ablation == "group=1":
            p1, m1 = _generator_budget(d, t, k, 1, s, a, hw, words)
        elif ablation == "kernel=3":
            p1, m1 = _generator_budget(d, t, 3, g, s, a, hw, words)
            m1 += hw * d * 9 - hw * d * k * k  # the dynamic conv itself: N*C*H*W*k^2
        elif ablation == "no pixel packing":
            p1, m1 = _generator_budget(d, t, k, g, 1, a, hw, words)
        else:  # language only: masked mean -> MLP -> k^2 g kernels, once per sample
            h = LANG_HIDDEN
            p1 = t * h + h + h * k * k * g + k * k * g
            m1 = t * h + h * k * k * g
        dp, dm = dp + p1 - p0, dm + m1 - m0
    return dp, dm


@pytest.fixture(scope="module")
def s_budgets():
    from langground.bench import bench_text, count_macs
    from langground.bench.core import BENCH_VOCAB

    text = bench_text(1, BENCH_VOCAB)
    image = torch.randn(1, 3, 416, 416)

    def budget(**kw):
        m = create_model("laconvnet_s", vocab_size=BENCH_VOCAB, input_size=416, **kw).eval()
        with torch.no_grad():
            return sum(p.numel() for p in m.parameters()), count_macs(m, image, text).total, m.config

    return budget, text.token_ids.shape[1], {"base": budget()}


@pytest.mark.slow
@pytest.mark.parametrize("ablation", sorted(TAB10))
def test_table10_ablation_budgets_of_s(ablation, s_budgets):
    """Each Tab. 10 switch changes params and MACs by exactly what its shapes give, in the paper's
    direction; its MACs match Tab. 10 within a tolerance that the unmodified base model fails."""
    budget, words, cache = s_budgets
    base_params, base_macs, cfg = cache["base"]
    kwargs, paper_params, paper_macs = TAB10[ablation]
    params, macs, _ = budget(**kwargs)
    dp, dm = _budget_delta(ablation, cfg, 416, words)
    assert (params - base_params, macs - base_macs) == (dp, dm), ablation
    assert params < base_params  # every row of Tab. 10 is smaller than LaConvNet-S ...
    assert (macs > base_macs) == (ablation == "no pixel packing")  # ... and cheaper, but "no pixel packing"
    tol = MACS_TOL[ablation]
    assert abs(macs / paper_macs - 1) < tol, (ablation, macs)
    # the tolerance discriminates: the ablation's effect exceeds it and the base model misses the row
    assert abs(dm) / base_macs > tol
    assert abs(base_macs / paper_macs - 1) > tol, (ablation, base_macs)
