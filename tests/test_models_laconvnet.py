"""LaConvNet specifics: Table 1 layout, ablation switches, attention maps, config rebuild, overfitting."""

import time

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from langground.errors import LanggroundError
from langground.layers import FiLMBlock, LaConvBlock, LanguageKernelGenerator, QGHCBlock
from langground.losses import build_criterion
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


def _drawn_samples(size=64, n=8, seed=0):
    """n images with two coloured squares each; the text names one colour."""
    colors = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1)}
    words = ["<pad>", "<unk>", "the", "red", "green", "blue", "yellow", "square"]
    g = torch.Generator().manual_seed(seed)
    images, ids, boxes = [], [], []
    for i in range(n):
        img = torch.full((3, size, size), -1.5)
        placed = []
        for c in torch.randperm(4, generator=g)[:2].tolist():
            while True:
                side = int(torch.randint(size // 6, size // 3, (1,), generator=g))
                x0, y0 = (int(v) for v in torch.randint(0, size - side, (2,), generator=g))
                if all(
                    x0 + side <= a or a + s <= x0 or y0 + side <= b or b + s <= y0 for a, b, s, _ in placed
                ):
                    break
            name = list(colors)[c]
            img[:, y0 : y0 + side, x0 : x0 + side] = torch.tensor(colors[name]).view(3, 1, 1)
            placed.append((x0, y0, side, name))
        x0, y0, side, name = placed[i % 2]
        images.append(img)
        ids.append([2, words.index(name), 7])
        boxes.append(
            torch.tensor([[(x0 + side / 2) / size, (y0 + side / 2) / size, side / size, side / size]])
        )
    return torch.stack(images), _text(ids), boxes, len(words)


def test_tiny_model_overfits_eight_samples():
    torch.manual_seed(0)
    start = time.perf_counter()
    images, text, boxes, vocab = _drawn_samples()
    targets = Targets(boxes, None, torch.zeros(8, dtype=torch.bool), torch.full((8,), -1))
    model = create_model("laconvnet_t", vocab_size=vocab, input_size=64)
    criterion = build_criterion("rec")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(80):
        losses = criterion(model.train()(images, text), targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = float(losses["loss"].detach()) if first is None else first
    with torch.no_grad():
        pred = model.eval()(images, text)["pred_boxes"]
    gt = torch.cat(boxes)
    iou = box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy")).diag()
    assert float(losses["loss"].detach()) < 0.25 * first
    # Half the expressions name the first square and half the second: only reading the text gets them all.
    assert (iou > 0.5).all(), iou
    assert time.perf_counter() - start < 30
