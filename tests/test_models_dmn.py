"""DMN (models/dmn.py and its layers): shapes, gradients, overfitting, round trips, padding, the release's
mSRU order, the Table 1 switches, the second stage, the IoU loss and ONNX export."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from langground.errors import LanggroundError
from langground.layers.dmn_loss import SoftIoULoss
from langground.layers.dmn_synthesis import SynthesisModule
from langground.layers.loc import spatial_map
from langground.layers.sru import SRU
from langground.losses import build_criterion
from langground.registry import create_model
from langground.types import Targets, TextBatch
from test_models_registry_sweep import WORDS, synthetic_samples

SIZE = 64
VOCAB = 30


def _tiny(task="res", **kw):
    torch.manual_seed(0)
    return create_model("dmn_t", task=task, vocab_size=VOCAB, input_size=SIZE, **kw)


def _text(lengths, steps=None):
    g = torch.Generator().manual_seed(1)
    steps = steps or max(lengths)
    ids = torch.randint(2, VOCAB, (len(lengths), steps), generator=g)
    mask = torch.arange(steps)[None] < torch.tensor(lengths)[:, None]
    ids[~mask] = 0
    return TextBatch(ids, mask)


def _images(n):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _targets(n):
    masks = torch.zeros(n, 1, SIZE, SIZE)
    masks[:, :, 16:40, 8:48] = 1
    boxes = [torch.tensor([[0.44, 0.44, 0.62, 0.38]])] * n
    return Targets(boxes, masks, torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long))


def test_shapes_for_res_and_gres_and_the_filter_responses_as_attention():
    text = _text([5, 3])
    for task in ("res", "gres"):
        out = _tiny(task).eval()(_images(2), text)
        assert out["pred_masks"].shape == (2, 1, SIZE, SIZE)  # the UM goes back to full resolution
        att = out["aux"]["attention"]
        assert sorted(att) == sorted(f"filter{k}" for k in range(1, 11))  # K = 10 responses F_t
        assert att["filter1"].shape == (2, 5, 2, 2)  # (N, words, h, w) at stride 32
        assert torch.all(att["filter3"][1, 3:] == 0)  # padded words show nothing
        if task == "gres":
            assert out["pred_no_target"].shape == (2,)
    low = _tiny(upsampling=False).eval()(_images(2), text)
    assert low["pred_masks"].shape == (2, 1, SIZE, SIZE)  # low-res stage: bilinear to the input size


def test_paper_variant_widths_and_filter_generator():
    # built on the meta device: sizes only (the filter generator alone is 2000 x 26,960)
    with torch.device("meta"):
        model = create_model("dmn", vocab_size=VOCAB, input_size=SIZE)
    assert model.vm.channels == [64, 336, 704, 1552, 2688] and model.vm.reductions == [2, 4, 8, 16, 32]
    assert tuple(model.lm.filters.weight.shape) == (10 * (2688 + 8), 2000)
    assert tuple(model.sm.comb_conv.weight.shape) == (1000, 2688 + 8 + 2000 + 10, 1, 1)
    assert [c.out_channels for c in model.um.convs] == [512, 256, 128, 64, 32]
    assert [layer.k for layer in model.lm.sru.rnn_lst] == [3, 3] and len(model.sm.msru.rnn_lst) == 3


def test_gradients_reach_every_parameter_for_every_switch():
    switches = [
        {},
        {"use_language": False},
        {"r_with_embedding": False},
        {"um_skips": False},
        {"num_filters": 0},
        {"concat_r": False},
        {"upsampling": False},
        {"msru_layout": "official"},
        {"sru_activation": "sigmoid", "um_order": "up_conv", "um_act": "prelu"},
    ]
    text, images, targets = _text([4, 2]), _images(2), _targets(2)
    for kw in switches:
        model = _tiny(**kw).train()
        losses = build_criterion("res", model, mask_iou=1.0)(model(images, text), targets)
        losses["loss"].backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (kw, missing[:4])
        assert torch.isfinite(losses["loss"]) and "loss_mask_iou" in losses


def test_ablation_switches_remove_what_table_1_removes():
    full = _tiny()
    counts = {n: p.numel() for n, p in full.named_parameters()}
    assert _tiny(use_language=False).get_submodule("vm_head") is not None
    assert not hasattr(_tiny(use_language=False), "lm")
    assert _tiny(num_filters=0).lm.filters is None
    only_h = _tiny(r_with_embedding=False)
    assert only_h.lm.out_dim == 64 and only_h.lm.filters.in_features == 64  # r_t = h_t
    assert only_h.sm.comb_conv.in_channels == full.sm.comb_conv.in_channels - 64
    assert _tiny(concat_r=False).sm.comb_conv.in_channels == 128 + 8 + 10  # [I_N, LOC, F_t]
    no_skip = _tiny(um_skips=False)
    assert no_skip.um.convs[0].in_channels == 64 and full.um.convs[0].in_channels == 64 + 128
    assert sum(counts.values()) > sum(p.numel() for p in no_skip.parameters())
    with pytest.raises(LanggroundError, match="'only VM'"):
        _tiny("gres", use_language=False)
    with pytest.raises(LanggroundError, match="unknown DMN option"):
        _tiny(filters=3)


def test_mixed_lengths_in_one_batch_equal_each_expression_alone():
    for layout in ("paper", "official"):
        model = _tiny(msru_layout=layout).eval()
        text, images = _text([6, 2, 4]), _images(3)
        with torch.no_grad():
            batch = model(images, text)["pred_masks"]
            for i, n in enumerate([6, 2, 4]):
                alone = TextBatch(text.token_ids[i : i + 1, :n], text.attention_mask[i : i + 1, :n])
                single = model(images[i : i + 1], alone)["pred_masks"]
                assert torch.allclose(batch[i : i + 1], single, atol=1e-5), (layout, i)


def release_msru(m, msru):
    """The release's BaseDMN mSRU step, re-enacted on one expression ``m`` ``(L, C, H, W)``: one
    pixel-major sequence of batch 1, the last H*W outputs kept and laid out as the map."""
    steps, c, h, w = m.shape
    q = m.unsqueeze(1).view(steps, 1, c, h * w)  # L x 1 x M x HW
    q = q.permute(3, 0, 1, 2).contiguous().view(h * w * steps, 1, c)  # (HW*L) x 1 x M
    out, _ = msru(q)
    out = out[-(h * w) :]
    return out.permute(1, 2, 0).contiguous().view(1, -1, h, w)


def test_official_msru_layout_reproduces_the_release_order():
    torch.manual_seed(0)
    sm = SynthesisModule(vis_channels=3, r_dim=2, num_filters=0, mixed_dim=4, hidden_dim=4, layout="official")
    steps, h, w = 3, 2, 3
    m = torch.randn(2, steps, 4, h, w)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    sm.multimodal = lambda vis, r, responses: m  # feed a known M_t
    got = sm(torch.zeros(2, 3, h, w), torch.zeros(2, steps, 2), mask, None)
    assert torch.allclose(got[0:1], release_msru(m[0], sm.msru), atol=1e-6)
    assert torch.allclose(got[1:2], release_msru(m[1, :2], sm.msru), atol=1e-6)  # its own 2 words
    # and the documented order is not the paper's layout (final state of each pixel's words)
    sm.layout = "paper"
    assert not torch.allclose(sm(torch.zeros(2, 3, h, w), torch.zeros(2, steps, 2), mask, None), got)


def test_paper_msru_layout_is_the_final_state_of_each_pixels_words():
    torch.manual_seed(0)
    sm = SynthesisModule(vis_channels=3, r_dim=2, num_filters=0, mixed_dim=4, hidden_dim=4)
    m = torch.randn(1, 3, 4, 2, 2)
    sm.multimodal = lambda vis, r, responses: m
    got = sm(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), None)
    seq = m[0, :, :, 1, 0].unsqueeze(1)  # pixel (y=1, x=0): its 3 words, batch 1
    h, _ = sm.msru(seq)
    assert torch.allclose(got[0, :, 1, 0], h[-1, 0], atol=1e-6)


def test_loc_map_values():
    loc = spatial_map(2, 4, torch.zeros(1))
    assert loc.shape == (1, 8, 2, 4)
    cell = loc[0, :, 1, 2]  # y = 1 of 2, x = 2 of 4
    expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 0.25, 0.5, 0.25, 0.5])
    assert torch.allclose(cell, expected)


def test_iou_loss_worked_out_by_hand():
    logits = torch.full((1, 1, 2, 2), -30.0)
    logits[..., 0, :] = 30.0  # p = 1 on the top row, 0 below
    masks = torch.zeros(1, 1, 2, 2)
    masks[..., :, 0] = 1  # the left column
    t = Targets([torch.tensor([[0.5, 0.5, 0.5, 1.0]])], masks, torch.zeros(1, dtype=torch.bool), None)
    loss = SoftIoULoss()({"pred_masks": logits}, t)["loss_mask_iou"]
    assert torch.isclose(loss, torch.tensor(1 - 1 / 3), atol=1e-6)  # I = 1, U = 3


def test_overfits_eight_samples():
    torch.manual_seed(0)
    images, text, targets = synthetic_samples()
    model = create_model("dmn_t", task="res", vocab_size=len(WORDS), input_size=64)
    criterion = build_criterion("res", model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        losses = criterion(model.train()(images, text), targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = float(losses["loss"]) if first is None else first
    assert float(losses["loss"]) < 0.5 * first
    with torch.no_grad():
        pred = model.eval()(images, text)["pred_masks"] > 0
    gt = targets.masks > 0.5
    iou = (pred & gt).flatten(1).sum(1) / (pred | gt).flatten(1).sum(1).clamp_min(1)
    assert (iou > 0.5).all(), iou


def test_safetensors_round_trip_and_second_stage_init(tmp_path):
    model = _tiny("gres")
    text, images = _text([4, 3]), _images(2)
    model.train()(images, text)
    model.eval()
    with torch.no_grad():
        before = model(images, text)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    rebuilt = create_model("dmn_t", **model.model_config)
    rebuilt.load_state_dict(load_file(tmp_path / "m.safetensors"))
    with torch.no_grad():
        after = rebuilt.eval()(images, text)
    assert torch.equal(before["pred_masks"], after["pred_masks"])
    assert torch.equal(before["pred_no_target"], after["pred_no_target"])
    # the second stage: a low-res checkpoint initialises everything but the UM, which alone trains
    low = _tiny(upsampling=False)
    save_file(low.state_dict(), tmp_path / "low.safetensors")
    stage2 = _tiny(init_weights=str(tmp_path / "low.safetensors"), train_only_um=True)
    assert torch.equal(stage2.lm.filters.weight, low.lm.filters.weight)
    trainable = {n.split(".")[0] for n, p in stage2.named_parameters() if p.requires_grad}
    assert trainable == {"um"}
    stage2.train()
    assert not stage2.vm.training and stage2.um.training
    with pytest.raises(LanggroundError, match="init_weights: .*: no such checkpoint"):
        _tiny(init_weights=str(tmp_path / "missing"))
    with pytest.raises(LanggroundError, match="no weight fits"):
        save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
        _tiny(init_weights=str(tmp_path / "other.safetensors"))


def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _tiny().eval()
    text, images = _text([5, 5]), _images(2)

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images, ids, mask):
            return self.m.forward_unchecked(images, TextBatch(ids, mask))["pred_masks"]

    wrapped = Wrapped(model).eval()  # a fresh module trains: export would restore that mode
    args = (images, text.token_ids, text.attention_mask)
    path = tmp_path / "dmn_t.onnx"
    torch.onnx.export(wrapped, args, str(path), input_names=["images", "ids", "mask"], dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(
        None, {"images": images.numpy(), "ids": text.token_ids.numpy(), "mask": text.attention_mask.numpy()}
    )
    with torch.no_grad():
        ref = wrapped(*args)
    assert torch.allclose(torch.from_numpy(got[0]), ref, atol=1e-4)


def test_sru_inside_the_language_module_is_v1_layout():
    model = _tiny()
    assert isinstance(model.lm.sru, SRU)
    keys = [k for k in model.state_dict() if k.startswith("lm.sru.")]
    assert keys == [
        "lm.sru.rnn_lst.0.weight",
        "lm.sru.rnn_lst.0.bias",
        "lm.sru.rnn_lst.1.weight",
        "lm.sru.rnn_lst.1.bias",
    ]


def test_plateau_schedule_divides_the_lr_after_patience_flat_epochs():
    from langground.config import ScheduleConfig
    from langground.engine.optim import PlateauLR, build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-5)
    sched = build_scheduler(opt, ScheduleConfig(name="plateau", patience=2, gamma=0.1), 100, 2)
    assert isinstance(sched, PlateauLR)
    lrs = []
    # epoch mean losses: 1.0 (best), 0.5 (best), then 0.6, 0.55, 0.5 (no gain on 0.5): the 3rd bad epoch cuts
    for loss in [1.0, 1.0, 0.5, 0.5, 0.6, 0.6, 0.55, 0.55, 0.5, 0.5, 0.7, 0.7]:
        opt.step()
        sched.step()
        sched.observe(loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:10] == [1e-5] * 10
    assert lrs[10:] == pytest.approx([1e-6] * 2)  # from the step after the 5th epoch ended
    state = sched.state_dict()
    assert state["scale"] == pytest.approx(0.1) and state["best"] == 0.5
    again = build_scheduler(opt, ScheduleConfig(name="plateau"), 100, 2)
    again.load_state_dict(state)
    assert again.scale == pytest.approx(0.1) and again.bad_epochs == 1


def test_mask_threshold_sweep_worked_out_by_hand():
    import numpy as np

    from langground.engine.metrics.threshold_sweep import DMN_GRID, MaskThresholdSweep

    assert DMN_GRID[:3] == (0.0, 0.025, 0.05) and DMN_GRID[-1] == 0.95 and len(DMN_GRID) == 39
    sweep = MaskThresholdSweep([0.2, 0.5, 0.8])
    sweep.update(np.array([[0.9, 0.6], [0.3, 0.1]]), np.array([[1, 1], [0, 0]]))  # IoU 2/3, 1, 1/2
    sweep.update(np.array([[0.7, 0.4], [0.4, 0.4]]), np.array([[0, 0], [0, 1]]))  # IoU 1/4, 0, 0
    out = sweep.compute()
    assert out["oiou"] == pytest.approx([3 / 7, 2 / 4, 1 / 3])  # ΣI / ΣU per threshold
    assert out["miou"] == pytest.approx([(2 / 3 + 1 / 4) / 2, 0.5, 0.25])
    assert out["best_threshold"] == 0.5
    best = out["best"]
    assert best["res/oiou"] == pytest.approx(0.5) and best["res/pr@0.5"] == pytest.approx(0.5)
    assert best["res/pr@0.9"] == pytest.approx(0.5) and best["res/count"] == 2


def test_threshold_sweep_on_a_split_agrees_with_the_evaluator(tmp_path):
    from langground.config import load_preset
    from langground.data.synthetic import SynthConfig, generate_world
    from langground.engine.builders import build_model, build_vocab, open_split
    from langground.engine.evaluate import evaluate_model
    from langground.engine.metrics.threshold_sweep import sweep_mask_threshold

    world = generate_world(tmp_path / "synth", SynthConfig(images=6, size=(96, 72), seed=0), workers=1)
    cfg = load_preset(
        "synth-dmn-t-res",
        [f"data.root={world}", "transforms.input_size=64", "run.num_threads=1", "data.eval_limit=5"],
    )
    records = open_split(cfg.data, "val", 5)
    vocab = build_vocab(open_split(cfg.data, "train"), cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    out = sweep_mask_threshold(model, records, cfg, vocab, device=torch.device("cpu"), thresholds=[0.3, 0.5])
    cfg.postprocess.mask_threshold = 0.5
    plain = evaluate_model(model, records, cfg, vocab, None, device=torch.device("cpu")).metrics
    assert out["oiou"][1] == pytest.approx(plain["res/oiou"], abs=1e-9)
    assert out["miou"][1] == pytest.approx(plain["res/miou"], abs=1e-9)
    assert out["best_threshold"] in (0.3, 0.5)
