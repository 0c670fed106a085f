"""LaConvNet specifics: Table 1 layout, documented variants, ablation switches on every task, attention maps,
config rebuild. (Overfitting: tests/test_models_registry_sweep.py.)"""

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
    for name, depths in (("laconvnet_s", [2, 1, 2, 4, 1]), ("laconvnet_b", [3, 3, 4, 6, 3])):
        m = create_model(name)
        bb = m.backbone
        assert [len(s) for s in bb.stages] == depths
        assert sum(depths) == (10 if name == "laconvnet_s" else 19)
        for i, stage in enumerate(bb.stages):
            for block in stage:
                gen = block.laconv.generator
                assert block.mlp.fc1.conv.out_channels == 4 * [16, 64, 128, 256, 512][i]
                assert gen.packing == [8, 4, 2, 1, 1][i]
                assert gen.groups == [4, 4, 8, 8, 16][i]
                assert gen.kernel_size == [3, 7, 7, 7, 7][i]
        assert m.input_size == 416 and m.text_encoder.rnn.hidden_size == 512
    assert create_model("laconvnet_s", task="res").input_size == 320
    assert create_model("laconvnet_s", task="vqa", num_answers=28).input_size == 224


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
