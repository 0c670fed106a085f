"""LADS (issue 9): the Gating Network (Eq. 1-5), the MI term (Eq. 8-9) and REAL subnet execution: masked
supernet == grouped static subnets == extracted subnet, and the subnet really computes less."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from langground.layers.gated_blocks import SlicedBottleneck, is_gateable
from langground.layers.gates import Gates, binary_gate, gate_mutual_information
from langground.losses import build_criterion
from langground.models.lads import LADS, LADSConfig
from langground.models.lads_subnet import build_resnet as _build_resnet
from langground.models.lads_subnet import resnet_blocks
from langground.registry import create_model, list_models
from langground.types import Targets, TextBatch
from text_batches import random_text

VOCAB, SIZE = 40, 64


def _text(n: int, length: int = 6, seed: int = 0) -> TextBatch:
    return random_text(n, VOCAB, length, seed)


def _targets(n: int) -> Targets:
    boxes = [torch.tensor([[0.5, 0.5, 0.2, 0.2]])] * n
    return Targets(boxes, None, torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long))


def _model(**kw) -> LADS:
    torch.manual_seed(0)
    m = create_model("lads_t", vocab_size=VOCAB, input_size=SIZE, dropout=0.0, **kw)
    # non-trivial BatchNorm statistics and affines (timm zero-inits the last BN of each bottleneck)
    g = torch.Generator().manual_seed(1)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
        if isinstance(bn, nn.LayerNorm):  # at init LN(LN(x)) == LN(x): a skipped LN would go unnoticed
            bn.weight.data.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)
    return m.eval()


def _random_gates(m: LADS, n: int, seed: int, p_layer: float = 0.5, p_filter: float = 0.6) -> Gates:
    g = torch.Generator().manual_seed(seed)
    layer = (torch.rand(n, m.gating.num_units, generator=g) < p_layer).float()
    filt = (torch.rand(n, sum(m.gating.filters), generator=g) < p_filter).float()
    return Gates(layer, filt)


def _masked(m: LADS, images, text, gates):
    m.config.execution = "masked"
    try:
        return m.forward_with_gates(images, text, gates)["pred_boxes"]
    finally:
        m.config.execution = "subnet"


def test_registry_contract_and_paper_layout():
    assert {"lads_t", "lads_r50"} <= set(list_models())
    m = _model()
    images, text = torch.randn(3, 3, SIZE, SIZE), _text(3)
    out = m.train()(images, text)
    assert out["pred_boxes"].shape == (3, 4) and ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert set(out["losses"]) == {"loss_mi"} and m.loss_weights == {"mi": 0.1}
    u, c = m.gating.num_units, sum(m.gating.filters)
    assert out["aux"]["gates"]["layer"].shape == (3, u) and out["aux"]["gates"]["filter"].shape == (3, c)
    assert len(m.fusion) == 3 and u == len(m.gated_blocks) + 2 * 3
    # lads_r50's layout (ResNet-50 on the meta device: no memory): 12 identity bottlenecks gated, the
    # first block of each stage (projection shortcut) always runs; 6 fusion layers, 512^2, 40 tokens
    cfg = LADSConfig()
    assert (cfg.input_size, cfg.max_text_length, cfg.dim, cfg.heads, cfg.ffn, cfg.fusion_layers) == (
        512,
        40,
        256,
        8,
        2048,
        6,
    )
    assert cfg.text_encoder == "minilm" and cfg.backbone == "resnet50"
    with torch.device("meta"):
        net = _build_resnet(cfg)
    gated = [n for n, b in resnet_blocks(net) if is_gateable(b)]
    assert len(gated) == 12 and not {"layer1.0", "layer2.0", "layer3.0", "layer4.0"} & set(gated)


def test_safetensors_round_trip(tmp_path):
    m = _model()
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(2)
    with torch.no_grad():
        before = m(images, text)["pred_boxes"]
    save_file(m.state_dict(), tmp_path / "m.safetensors")
    rebuilt = create_model("lads_t", **m.model_config)
    rebuilt.load_state_dict(load_file(tmp_path / "m.safetensors"))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images, text)["pred_boxes"], before)


def test_every_gate_starts_open():
    m = _model()
    with torch.no_grad():
        g, alpha, _, mask = m.gates(_text(4))
    assert g.layer.eq(1).all() and g.filter.eq(1).all()
    assert torch.allclose(alpha.sum(-1), torch.ones_like(alpha[..., 0]))
    assert alpha[-1, :, -2:].eq(0).all()  # padding gets no pooling weight (Eq. 1)
    with torch.no_grad():
        tokens, mask = m.encode_text(_text(64))
        r_layer, r_filter, _ = m.gating.relevance(tokens, mask)
    r = torch.cat([r_layer, r_filter], 1)
    assert r.min() > 0 and (r.mean() - 3.0).abs() < 0.5  # the +3 head biases dominate at init: all open
    # Xavier heads (the paper's init of "the rest"): the scores of one unit's filters already differ, so
    # the common MI gradient does not drive them in lock-step (N(0, 0.01^2) heads did: docs/lads.md)
    assert r_filter[:, : m.gating.filters[0]].std(1).mean() > 0.1
    small = create_model("lads_t", vocab_size=VOCAB, input_size=SIZE, gate_head_init="small").eval()
    with torch.no_grad():
        tokens, mask = small.encode_text(_text(64))
        assert small.gating.relevance(tokens, mask)[1][:, : small.gating.filters[0]].std(1).mean() < 0.05
    torch.manual_seed(0)
    hard, _ = binary_gate(r, training=True, use_soft=False)
    assert abs(hard.mean().item() - torch.sigmoid(r).mean().item()) < 0.01  # P(ON) under the noise


def test_binary_gates_noise_and_straight_through():
    torch.manual_seed(0)
    r = torch.zeros(2000, requires_grad=True)
    hard, soft = binary_gate(r, training=True, use_soft=False)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert abs(hard.mean().item() - 0.5) < 0.05  # Logistic noise: P(r + eps >= 0) = sigmoid(r)
    hard.sum().backward()
    assert torch.allclose(r.grad, soft * (1 - soft))  # straight-through: the soft gate's gradient
    s, _ = binary_gate(r, training=True, use_soft=True)
    assert ((s > 0) & (s < 1)).all() and s.std() > 0.1
    e1, p1 = binary_gate(torch.tensor([-0.1, 0.0, 2.0]), training=False)
    e2, _ = binary_gate(torch.tensor([-0.1, 0.0, 2.0]), training=False)
    assert e1.tolist() == [0.0, 1.0, 1.0] and torch.equal(e1, e2)  # no noise, hard at eval
    assert torch.allclose(p1, torch.sigmoid(torch.tensor([-0.1, 0.0, 2.0])))


def test_mutual_information_by_hand():
    p = torch.tensor([[0.9, 0.2], [0.1, 0.6]])

    def h(q):
        return -(q * math.log(q) + (1 - q) * math.log(1 - q))

    gate0 = h(0.5) - (h(0.9) + h(0.1)) / 2
    gate1 = h(0.4) - (h(0.2) + h(0.6)) / 2
    assert gate_mutual_information(p).item() == pytest.approx((gate0 + gate1) / 2, abs=1e-6)
    assert gate_mutual_information(torch.full((4, 3), 0.7)).item() == pytest.approx(0.0, abs=1e-6)
    # what the model returns is -I(G; F_l) of its soft gates, weighted 0.1 by the criterion
    m = _model().train()
    torch.manual_seed(3)
    out = m(torch.randn(4, 3, SIZE, SIZE), _text(4))
    losses = build_criterion("rec", m)(out, _targets(4))
    assert out["losses"]["loss_mi"].item() <= 0
    total = losses["loss_l1"] * 5.0 + losses["loss_giou"] * 2.0 + 0.1 * losses["loss_mi"]
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-5)


@pytest.mark.parametrize("n", [1, 5])
def test_masked_supernet_equals_subnets_equals_extracted(n):
    m = _model()
    images, text = torch.randn(n, 3, SIZE, SIZE), _text(n, seed=n)
    gates = _random_gates(m, n, seed=n)
    if n > 1:  # a mixed batch: repeated patterns, a fully closed filter set, an all-open row
        gates.layer[1], gates.filter[1] = gates.layer[0], gates.filter[0]
        gates.layer[2, : len(m.gated_blocks)] = 1
        gates.filter[2, : m.gating.filters[0]] = 0
        gates.layer[3], gates.filter[3] = 1, 1
    with torch.no_grad():
        masked = _masked(m, images, text, gates)
        skipped = m.forward_with_gates(images, text, gates)["pred_boxes"]
        tokens, mask = m.encode_text(text)
        for i in range(n):
            net = m.build_subnet(gates.layer[i], gates.filter[i])
            one = net(images[i : i + 1], tokens[i : i + 1], mask[i : i + 1])
            assert (one - masked[i : i + 1]).abs().max() <= 1e-5
    assert (skipped - masked).abs().max() <= 1e-5
    assert masked.std() > 0  # the gates matter: different patterns give different boxes
    all_open = _masked(m, images, text, Gates(torch.ones_like(gates.layer), torch.ones_like(gates.filter)))
    assert (all_open - masked).abs().max() > 1e-3


def test_extract_subnet_with_the_gating_networks_own_gates():
    m = _model()
    with torch.no_grad():  # "trained" gates: heads that close about half of everything
        m.gating.b2.normal_(0, 2)
        m.gating.b3.normal_(0, 2)
        m.gating.w3.normal_(0, 1)
    images = torch.randn(3, 3, SIZE, SIZE)
    text = _text(3, seed=7)
    with torch.no_grad():
        g, *_ = m.gates(text)
        assert 0 < g.filter.mean() < 1 and 0 < g.layer.mean() < 1
        ref = _masked(m, images, text, None)
        batched = m(images, text)["pred_boxes"]
    assert (batched - ref).abs().max() <= 1e-5
    for i in range(3):
        row = TextBatch(text.token_ids[i : i + 1], text.attention_mask[i : i + 1])
        sub = m.extract_subnet(row)
        assert isinstance(sub, nn.Module) and not any(isinstance(x, LADS) for x in sub.modules())
        with torch.no_grad():
            assert (sub(images[i : i + 1]) - ref[i : i + 1]).abs().max() <= 1e-5
        kept = [b.kept for b in sub.modules() if isinstance(b, SlicedBottleneck)]
        assert sum(kept) == sum(
            int(g.filter[i, m._offsets[k] : m._offsets[k + 1]].sum())
            for k in range(len(m.gated_blocks))
            if g.layer[i, k]
        )


def test_zero_padded_filter_widths_are_exact():
    m = _model()
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(2, seed=3)
    gates = _random_gates(m, 2, seed=3, p_layer=1.0)
    out = {}
    with torch.no_grad():
        for multiple in (1, 16):
            m.filter_multiple = multiple
            out[multiple] = m.forward_with_gates(images, text, gates)["pred_boxes"]
            net = m.build_subnet(gates.layer[0], gates.filter[0])
            sliced = [b for b in net.modules() if isinstance(b, SlicedBottleneck) and b.conv2 is not None]
            widths = [(b.kept, b.conv2.out_channels, b.conv3.in_channels) for b in sliced]
            # a multiple of ``multiple``, or the full width when rounding up would pass it
            assert all(w == c3 and k <= w < k + multiple for k, w, c3 in widths)
    assert any(k < w for k, w, _ in widths)  # some widths really were padded (with zero filters)
    assert (out[1] - out[16]).abs().max() <= 1e-6


def test_the_subnet_computes_less():
    m = _model()
    images, text = torch.randn(1, 3, SIZE, SIZE), _text(1)
    u = m.gating.num_units

    def flops(gates):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m.forward_with_gates(images, text, gates)
        return fc.get_total_flops()

    full = flops(Gates(torch.ones(1, u), torch.ones(1, sum(m.gating.filters))))
    half = flops(_random_gates(m, 1, seed=4, p_layer=0.0, p_filter=1.0))
    assert half < 0.8 * full
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        _masked(m, images, text, _random_gates(m, 1, seed=4, p_layer=0.0))
    assert fc.get_total_flops() == pytest.approx(full, rel=0.01)  # masking saves nothing


def test_cached_subnets_follow_in_place_weight_changes():
    m = _model()
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(2)
    with torch.no_grad():
        before = m(images, text)["pred_boxes"]
        assert m._subnets  # the pattern's subnet is cached ...
        m.backbone.layer4[1].conv2.weight.mul_(3.0)  # ... and an EMA copy / optimizer step changes weights
        after = m(images, text)["pred_boxes"]
        ref = _masked(m, images, text, None)
    assert (after - before).abs().max() > 1e-4 and (after - ref).abs().max() <= 1e-5


def test_cached_subnets_follow_replaced_parameters():
    m, other = _model(), _model()
    with torch.no_grad():
        for p in other.backbone.parameters():
            p.mul_(1.5)
    images, text = torch.randn(2, 3, SIZE, SIZE), _text(2)
    with torch.no_grad():
        m(images, text)  # fold + subnet cached over m's own Parameter objects
        m.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects, not in-place
        got = m(images, text)["pred_boxes"]
        want = other(images, text)["pred_boxes"]
    assert (got - want).abs().max() <= 1e-5


def test_build_subnet_needs_eval_and_options_are_checked():
    m = _model().train()
    with pytest.raises(ValueError, match="eval"):
        m.build_subnet(torch.ones(m.gating.num_units), torch.ones(sum(m.gating.filters)))
    with pytest.raises(ValueError, match="unknown LADS option"):
        create_model("lads_t", widht=3)
    with pytest.raises(ValueError, match="execution"):
        create_model("lads_t", execution="fast")


def test_lads_t_trains_through_the_engine(tmp_path):
    from langground.config import load_preset
    from langground.data.synthetic import SynthConfig, generate_world
    from langground.engine.logging import read_jsonl
    from langground.engine.train import train

    world = generate_world(tmp_path / "synth", SynthConfig(images=8, size=(96, 72), seed=0), workers=1)
    from tiny_config import TINY_RUN

    overrides = [
        f"data.root={world}",
        *TINY_RUN,
        "transforms.input_size=64",
        "data.train_limit=8",
        "run.epochs=1",
    ]
    # the brief's route: the LaConvNet-T demo preset with the model swapped ...
    cfg = load_preset(
        "synth-laconvnet-t-rec", [*overrides, "model.name=lads_t", "model.kwargs={}", "run.ema=false"]
    )
    train(cfg, tmp_path / "run")
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert rows and all("loss_mi" in r and math.isfinite(r["loss"]) for r in rows), rows[:1]
    # ... and LADS-T's own preset: Eq. 9's weights, L1 + 1.0 GIoU + 0.1 (-I), plus the token box
    # head's objectness (ours)
    result = train(load_preset("synth-lads-t-rec", overrides), tmp_path / "run2")
    rows = [r for r in read_jsonl(tmp_path / "run2" / "metrics.jsonl") if r["kind"] == "train"]
    assert rows and all(r["loss_mi"] <= 0 for r in rows)
    assert any(r["kind"] == "val" for r in read_jsonl(tmp_path / "run2" / "metrics.jsonl"))  # eval: subnets
    for r in rows:
        expected = r["loss_l1"] + r["loss_giou"] + r["loss_obj"] + 0.1 * r["loss_mi"]
        assert r["loss"] == pytest.approx(expected, rel=1e-4), r
    assert result is not None


def test_extracted_subnet_exports_like_any_network():
    m = _model()
    images = torch.randn(2, 3, SIZE, SIZE)
    sub = m.extract_subnet(_text(1))
    program = torch.export.export(sub, (images,))
    with torch.no_grad():
        assert (program.module()(images) - sub(images)).abs().max() <= 1e-5


def test_expressions_sharing_images_route_exactly():
    m = _model()
    images = torch.randn(2, 3, SIZE, SIZE)
    base = _text(4, seed=11)
    text = TextBatch(base.token_ids, base.attention_mask, image_index=torch.tensor([1, 0, 1, 1]))
    gates = _random_gates(m, 4, seed=12)
    gates.layer[3], gates.filter[3] = gates.layer[0], gates.filter[0]  # rows 0 and 3: same pattern
    with torch.no_grad():
        skipped = m.forward_with_gates(images, text, gates)["pred_boxes"]
        masked = _masked(m, images, text, gates)
        per_row = _masked(m, images[[1, 0, 1, 1]], base, gates)
    assert (skipped - masked).abs().max() <= 1e-5 and (masked - per_row).abs().max() <= 1e-6


def test_output_stride_16_dilates_the_last_stage_and_subnets_stay_exact():
    m = _model(output_stride=16)
    images, text = torch.randn(3, 3, SIZE, SIZE), _text(3, seed=5)
    with torch.no_grad():
        assert m.backbone.forward_features(images).shape[-1] == SIZE // 16  # 4x the visual tokens of 32
        gates = _random_gates(m, 3, seed=5)
        subnet = m.forward_with_gates(images, text, gates)["pred_boxes"]
        assert (subnet - _masked(m, images, text, gates)).abs().max() <= 1e-5
    dilated = [b for n, b in m._blocks() if n.startswith("layer4") and n in m.gated_blocks]
    assert dilated and all(tuple(b.conv2.dilation) == (2, 2) for b in dilated)
    with pytest.raises(Exception, match="output_stride must be 16 or 32"):
        _model(output_stride=8)


def test_sliced_pointwise_conv3_matches_the_conv():
    from langground.layers.gated_blocks import Pointwise

    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 1)
    pw = Pointwise(conv.weight[:, :, 0, 0].t(), conv.bias)
    x = torch.randn(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert (pw(x) - conv(x)).abs().max() <= 1e-5
        assert (pw(x.contiguous()) - conv(x)).abs().max() <= 1e-5  # a plain NCHW input too
    assert (pw.in_channels, pw.out_channels) == (24, 40)
