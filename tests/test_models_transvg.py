"""TransVG: shapes, [REG]'s explanation maps, text truncation, frozen stages, parameter groups of the
released recipe, ONNX export, and the augmentation it trains with (multi-scale letterbox, spatial-word
crop skip)."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from langground.config import load_preset
from langground.data.transforms import (
    RandomLetterbox,
    ReferentSafeRandomCrop,
    TransformConfig,
    build_transforms,
)
from langground.engine.optim import param_groups
from langground.errors import LanggroundError
from langground.layers.detr_encoder import Attention
from langground.models.text_encoders import MiniLMTextEncoder, build_text_encoder
from langground.registry import create_model
from langground.types import TextBatch

VOCAB = 30
SIZE = 64


def _text(n: int, length: int, seed: int = 0) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[-1, length - 2 :] = False
    ids[~mask] = 0
    words = [[f"w{int(i)}" for i in row[m]] for row, m in zip(ids, mask, strict=True)]
    return TextBatch(ids, mask, [" ".join(w) for w in words], words)


def _tiny(**kw):
    torch.manual_seed(0)
    return create_model("transvg_t", vocab_size=VOCAB, input_size=SIZE, **kw).eval()


def test_forward_shapes_and_reg_attention_maps():
    model = _tiny()
    images, text = torch.randn(3, 3, SIZE, SIZE), _text(3, 5)
    with torch.no_grad():
        out = model(images, text)
    assert out["pred_boxes"].shape == (3, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    maps = out["aux"]["attention"]
    assert list(maps) == ["vl1", "vl2"]  # one per VL layer, in forward order
    for att in maps.values():
        assert att.shape == (3, 5, SIZE // 32, SIZE // 32)  # (N, L_words, h, w)
        assert (att >= 0).all()
        torch.testing.assert_close(att.sum((-1, -2)), torch.ones(3, 5))  # a distribution over the image
        assert torch.equal(att[:, 0], att[:, 4])  # [REG]'s one map, in every word column
    assert not torch.allclose(maps["vl1"], maps["vl2"])


def test_reg_map_is_the_reg_rows_visual_share_of_the_last_layer():
    model = _tiny()
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(2, 4)
    seen = {}
    last = model.vl_encoder.layers[-1].attn

    def keep(module, args, output) -> None:
        seen["probs"] = output[1]

    last.register_forward_hook(keep)
    with torch.no_grad():
        out = model(images, text)
    probs = seen["probs"]  # (N, heads, 1 + L + hw, 1 + L + hw)
    assert isinstance(last, Attention) and probs.shape[1] == 4
    row = probs[:, :, 0, 1 + 4 :].mean(1)
    expected = (row / row.sum(-1, keepdim=True)).reshape(2, 2, 2)
    torch.testing.assert_close(out["aux"]["attention"]["vl2"][:, 1], expected)
    assert (probs[:, :, 0, 1:5].sum(-1) > 0).all()  # [REG] also reads the words: hence the renormalisation
    assert probs[1, :, :, 1 + 2 : 1 + 4].abs().max() == 0  # padded words get no attention


def test_one_image_for_several_expressions_equals_one_image_each():
    model = _tiny()
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(3, 5)
    index = torch.tensor([0, 1, 1])
    shared = TextBatch(text.token_ids, text.attention_mask, text.texts, text.tokens, index)
    with torch.no_grad():
        a = model(images, shared)["pred_boxes"]
        b = model(images[index], text)["pred_boxes"]
    torch.testing.assert_close(a, b)


def test_text_is_cut_to_max_text_tokens():
    model = _tiny(max_text_tokens=3)
    images, text = torch.randn(1, 3, SIZE, SIZE), _text(1, 6)
    text = TextBatch(text.token_ids, torch.ones_like(text.attention_mask))
    changed = text.token_ids.clone()
    changed[0, 4] = (changed[0, 4] + 1) % (VOCAB - 2) + 2  # a word after the 3 kept tokens
    changed_first = text.token_ids.clone()
    changed_first[0, 0] = (changed_first[0, 0] + 1) % (VOCAB - 2) + 2
    with torch.no_grad():
        base = model(images, text)["pred_boxes"]
        late = model(images, TextBatch(changed, text.attention_mask))["pred_boxes"]
        early = model(images, TextBatch(changed_first, text.attention_mask))["pred_boxes"]
    assert model.vl_pos.shape[0] == 1 + 3 + (SIZE // 32) ** 2
    assert torch.equal(base, late) and not torch.allclose(base, early)


def test_position_table_is_used_as_is_at_input_size_and_resized_otherwise():
    model = _tiny()
    pos = model.position_embedding(4, 2, 2)
    n_text = model.config.max_text_tokens
    assert torch.equal(pos, torch.cat([model.vl_pos[:5], model.vl_pos[1 + n_text :]]))
    big = model.position_embedding(4, 4, 4)  # a 128^2 image on a model built for 64^2
    assert big.shape == (5 + 16, model.config.dim)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128), _text(1, 4))["aux"]["attention"]["vl1"].shape[-2:] == (4, 4)


def test_released_freezing_and_every_trainable_parameter_gets_a_gradient():
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = _tiny(freeze_bn=True, frozen_stages=1).train()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1")) for n in frozen)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    out = model(torch.randn(2, 3, SIZE, SIZE), _text(2, 5))
    out["pred_boxes"].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_refcoco_preset_gives_the_released_learning_rates():
    cfg = load_preset("refcoco-transvg-r50-rec")
    model = _tiny()
    groups = param_groups(model, cfg.optim)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd = {g["weight_decay"] for g in groups}
    assert wd == {1e-4}  # the released code decays every parameter
    for name, p in model.named_parameters():
        slow = name.startswith(("backbone.", "input_proj.", "detr_encoder.", "text_encoder.bert."))
        assert lr_of[id(p)] == (1e-5 if slow else 1e-4), name
    assert cfg.schedule.name == "multistep" and cfg.schedule.milestones == [60] and cfg.run.epochs == 90
    assert cfg.transforms.input_size == 640 and cfg.run.batch_size == 64


def test_onnx_export_with_dynamic_batch_and_text_length_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _tiny()

    class Boxes(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images, ids, mask):
            return self.m.forward_unchecked(images, TextBatch(ids, mask))["pred_boxes"]

    wrapper = Boxes(model).eval()
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(2, 5)
    path = tmp_path / "transvg_t.onnx"
    # the TorchScript exporter (seconds); dynamo=True with dynamic_shapes also matches (~1e-7), in ~10x the time
    torch.onnx.export(
        wrapper,
        (images, text.token_ids, text.attention_mask),
        str(path),
        input_names=["images", "ids", "mask"],
        output_names=["boxes"],
        dynamic_axes={"images": {0: "n"}, "ids": {0: "n", 1: "length"}, "mask": {0: "n", 1: "length"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, words in ((3, 7), (1, 2)):
        images, text = torch.randn(batch, 3, SIZE, SIZE), _text(batch, words, seed=batch)
        with torch.no_grad():
            expected = wrapper(images, text.token_ids, text.attention_mask).numpy()
        feeds = {"images": images.numpy(), "ids": text.token_ids.numpy(), "mask": text.attention_mask.numpy()}
        got = session.run(None, feeds)[0]
        assert got.shape == (batch, 4)
        assert abs(got - expected).max() < 1e-4


def test_text_encoder_options_random_bert_and_missing_checkpoint():
    enc = MiniLMTextEncoder(
        32,
        max_length=6,
        bert_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
    )
    assert enc.bert.config.hidden_size == 16 and enc.bert.config.vocab_size == 30522  # MiniLM's WordPiece
    feats = enc(TextBatch(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool), tokens=[
        ["the", "man", "on", "the", "left"]
    ]))  # fmt: skip
    assert feats.tokens.shape == (1, 6, 32)  # [CLS] + 4 words cut at max_length 6 with [SEP]
    with pytest.raises(LanggroundError, match=r"/no/such/bert: no such directory"):
        build_text_encoder("/no/such/bert", 10, 0, 32, 2, 64, 0.0)
    with pytest.raises(LanggroundError, match="unknown TransVG option"):
        create_model("transvg_t", text_layrs=3)


# ----------------------------------------------------------------------------- augmentation


def _sample(text: str, size: tuple[int, int] = (100, 200)) -> dict:
    h, w = size
    image = tv_tensors.Image(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[90.0, 40.0, 110.0, 60.0]]), format="XYXY", canvas_size=(h, w)
    )
    return {"image": image, "boxes": boxes, "text": text}


def test_crop_is_skipped_for_spatial_words_only():
    torch.manual_seed(0)
    crop = ReferentSafeRandomCrop(
        p=1.0, min_scale=0.5, skip_words=["left", "right", "top", "bottom", "middle"]
    )
    for text in ("the man on the LEFT", "top shelf", ["the cat", "cat in the middle"]):
        assert crop(_sample(text))["image"].shape[-2:] == (100, 200), text
    cropped = [crop(_sample(t))["image"].shape[-2:] for t in ("the bright cat", "the cat", ["a", "b"])]
    assert all(tuple(s) != (100, 200) for s in cropped)  # whole words only: "bright" is not "right"


def test_random_letterbox_scales_the_long_side_and_records_its_inverse():
    torch.manual_seed(0)
    box = RandomLetterbox(64, scales=[0.5], translate=True)
    seen = set()
    for _ in range(12):
        out = box(_sample("x"))
        scale, px, py = out["letterbox"]
        assert out["image"].shape[-2:] == (64, 64) and scale == 32 / 200
        assert 0 <= px <= 32 and 0 <= py <= 48
        seen.add((px, py))
        # orig = (canvas - pad) / scale
        b = out["boxes"][0]
        torch.testing.assert_close((b[0] - px) / scale, torch.tensor(90.0), atol=0.5, rtol=0)
        torch.testing.assert_close((b[3] - py) / scale, torch.tensor(60.0), atol=0.5, rtol=0)
    assert len(seen) > 3  # random placement
    centred = RandomLetterbox(64, scales=[0.5])(_sample("x"))["letterbox"]
    assert centred[1:] == (16.0, 24.0)
    steps = build_transforms(TransformConfig(input_size=64, resize_scales=(1.0, 0.5)), train=True).transforms
    assert any(isinstance(s, RandomLetterbox) for s in steps)
    assert not any(
        isinstance(s, RandomLetterbox) for s in build_transforms(TransformConfig(64), False).transforms
    )


def test_words_explain_mode_gives_each_word_its_own_map_with_sub_words_averaged():
    model = _tiny(explain="words")
    with torch.no_grad():
        maps = model(torch.randn(2, 3, SIZE, SIZE), _text(2, 4))["aux"]["attention"]
    att = maps["vl1"]  # row 1 has 2 real words of 4
    torch.testing.assert_close(att[0].sum((-1, -2)), torch.ones(4))
    torch.testing.assert_close(att[1].sum((-1, -2)), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert not torch.allclose(att[0, 0], att[0, 1])
    # a sub-word encoder: tokens [CLS] a a' b [SEP] -> words a (two sub-words, averaged) and b
    lt, hw = 5, 4
    probs = torch.zeros(1, 1, 1 + lt + hw, 1 + lt + hw)
    for t, cell in enumerate([0, 1, 2, 3, 0]):
        probs[0, 0, 1 + t, 1 + lt + cell] = 1.0
    mask = torch.ones(1, lt, dtype=torch.bool)
    word_index = torch.tensor([[-1, 0, 0, 1, -1]])
    out = model.explain_maps([probs], mask, word_index, 2, 2, words=3)["vl1"]
    expected = torch.tensor([[[0.0, 0.5], [0.5, 0.0]], [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(out[0], expected)
    with pytest.raises(LanggroundError, match="explain must be 'reg' or 'words'"):
        _tiny(explain="heads")


def test_tiny_transvg_overfits_eight_synthetic_samples():
    from torchvision.ops import box_convert, box_iou

    from langground.losses import build_criterion
    from test_models_registry_sweep import WORDS, synthetic_samples

    torch.manual_seed(0)
    images, text, targets = synthetic_samples()  # two coloured squares, "the <colour> square"
    model = create_model("transvg_t", vocab_size=len(WORDS), input_size=64)
    criterion = build_criterion("rec", model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(200):
        terms = criterion(model.train()(images, text), targets)
        loss = 4.0 * terms["loss_l1"] + terms["loss_giou"]  # the presets' weights
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model.eval()(images, text)["pred_boxes"]
    gt = torch.cat(targets.boxes)
    iou = box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy")).diag()
    assert iou.min() > 0.5, iou  # only reading the colour word finds the square (alternately 1st / 2nd)


def test_output_stride_16_doubles_the_token_grid():
    kwargs = {"layers": [1, 1, 1, 1], "channels": [16, 32, 48, 64], "stem_width": 16, "output_stride": 16}
    model = _tiny(backbone_kwargs=kwargs)
    assert model.stride == 16 and model.vl_pos.shape[0] == 1 + 20 + (SIZE // 16) ** 2
    with torch.no_grad():
        att = model(torch.randn(1, 3, SIZE, SIZE), _text(1, 3))["aux"]["attention"]["vl2"]
    assert att.shape == (1, 3, SIZE // 16, SIZE // 16)
