"""LADS tools (issue 9): ``lads-stats`` (Fig. 4 / 7), the subnet picture of ``predict --explain`` (Fig. 6),
the gated rows of ``langground bench``, the all-open switch and the paper's RefCOCO preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from langground.cli import _mount, app
from langground.config import load_preset
from langground.data import open_dataset
from langground.data.synthetic import SynthConfig, generate_world
from langground.engine import checkpoint as ckpt_io
from langground.engine.builders import build_model, build_vocab
from langground.types import TextBatch

SIZE = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(
        tmp_path_factory.mktemp("synth"), SynthConfig(images=6, size=(96, 72), seed=0), workers=1
    )


def _lads(world, tmp_path, name="lads", gates="learned"):
    """A lads_t checkpoint whose gates vary over expressions (heads set like a trained model's)."""
    cfg = load_preset(
        "synth-lads-t-rec",
        [f"data.root={world}", f"transforms.input_size={SIZE}", f"model.kwargs.gates={gates}"],
    )
    vocab = build_vocab(open_dataset(world, "synth", "train"), cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, vocab).eval()
    with torch.no_grad():
        model.gating.b2.normal_(0, 1.5)
        model.gating.w2.normal_(0, 1)
        model.gating.b3.normal_(0, 1.5)
        model.gating.w3.normal_(0, 1)
    path = ckpt_io.save_checkpoint(tmp_path / name, model=model, config=cfg, vocab=vocab)
    return path, model, vocab, cfg


@pytest.fixture(scope="module")
def cli():
    _mount()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for n in needles:
        assert n in res.output, res.output


def test_lads_stats_numbers_match_a_direct_computation(world, tmp_path, cli):
    from langground.inference.lads_plot import SIZE as PLOT_SIZE

    path, model, vocab, cfg = _lads(world, tmp_path)
    res = cli("lads-stats", path, "--data", world, "--split", "testA", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "out" / "lads-stats-testA.json").read_text())
    with Image.open(tmp_path / "out" / "lads-stats-testA.png") as im:
        assert im.size == PLOT_SIZE
    texts = [r.text for r in open_dataset(world, "synth", "testA", **cfg.data.open_kwargs)]
    batch = vocab.batch(texts, cfg.data.max_text_length)
    with torch.no_grad():
        g, alpha = model.explain_gates(batch)
    layer, filt = g.layer.numpy(), g.filter.numpy()
    assert stats["expressions"] == len(texts) and 0 < layer.mean() < 1 and 0 < filt.mean() < 1
    units = model.units()
    assert [u["name"] for u in stats["units"]] == [u["name"] for u in units]
    assert np.allclose([u["rate"] for u in stats["units"]], layer.mean(0))
    off = np.cumsum([0] + [u["filters"] for u in units])
    for k, u in enumerate(stats["units"]):
        if u["filters"]:
            assert np.allclose(u["filter_rates"], filt[:, off[k] : off[k + 1]].mean(0))
    n_bb = len(model.gated_blocks)
    kept = layer[:, :n_bb].sum(1).astype(int)
    assert stats["layers"]["backbone"]["histogram"] == np.bincount(kept, minlength=n_bb + 1).tolist()
    assert stats["layers"]["fusion"]["mean"] == pytest.approx(layer[:, n_bb:].sum(1).mean())
    # kept filters of a stage: open filters of its OPEN gated bottlenecks only
    l4 = [k for k, u in enumerate(units) if u["stage"] == "layer4"]
    kept4 = sum(filt[:, off[k] : off[k + 1]].sum(1) * layer[:, k] for k in l4)
    assert stats["filters"]["layer4"]["mean"] == pytest.approx(kept4.mean())
    assert stats["never_selected"]["layers"] == [
        u["name"] for u, r in zip(units, layer.mean(0), strict=True) if r == 0
    ]
    assert stats["always_selected"]["layers"] == [
        u["name"] for u, r in zip(units, layer.mean(0), strict=True) if r == 1
    ]
    rates = np.concatenate([layer.mean(0), filt.mean(0)])
    assert stats["summary"]["all_gates"]["never"] == int((rates == 0).sum())
    # Fig. 7 for one word, by hand: alpha averaged over its occurrences, softmax over units, summed per part
    word = "the"
    occ = [(i, j) for i, ws in enumerate(batch.tokens) for j, w in enumerate(ws) if w == word]
    s = np.mean([alpha[i, :, j].numpy() for i, j in occ], 0)
    s_hat = np.exp(s) / np.exp(s).sum()
    got = stats["word_assignment"]["words"][word]
    assert got["count"] == len(occ) and got["backbone"] == pytest.approx(s_hat[:n_bb].sum(), abs=1e-6)
    assert got["fusion"] == pytest.approx(s_hat[n_bb:].sum(), abs=1e-6)
    total = alpha.sum(-1)  # the words' share of each unit's pooling; [CLS] holds the rest (Eq. 1)
    assert ((total > 0) & (total < 1 + 1e-5)).all()


def test_lads_stats_errors_are_one_line(world, tmp_path, cli):
    path, *_ = _lads(world, tmp_path)
    _one_line_error(cli("lads-stats", path, "--data", world, "--split", "nope"), "nope")
    cfg = load_preset("synth-laconvnet-t-rec", [f"data.root={world}", "transforms.input_size=64"])
    vocab = build_vocab(open_dataset(world, "synth", "train"), cfg.data)
    other = ckpt_io.save_checkpoint(tmp_path / "lc", model=build_model(cfg, vocab), config=cfg, vocab=vocab)
    _one_line_error(cli("lads-stats", other, "--data", world, "--split", "testA"), "not a LADS")
    _one_line_error(cli("lads-stats", tmp_path / "missing", "--data", world, "--split", "testA"), "missing")


def test_subnet_diagram_draws_the_forced_gates(world, tmp_path):
    from langground.inference.subnet_diagram import ALWAYS, CLOSED, OPEN, draw_subnet, subnet_layout

    _, model, *_ = _lads(world, tmp_path)
    units = model.units()
    layer = np.ones(len(units))
    filt = np.ones(sum(u["filters"] for u in units))
    names = [u["name"] for u in units]
    off = np.cumsum([0] + [u["filters"] for u in units])
    closed = names.index(model.gated_blocks[0])  # a closed bottleneck
    layer[closed] = 0
    half = names.index(model.gated_blocks[-1])  # an open one with half its filters
    width = units[half]["filters"]
    filt[off[half] : off[half] + width // 2] = 0
    layer[names.index("fusion1.attention")] = 0
    layout = subnet_layout(model, layer, filt)
    stage = layout["stages"][units[half]["stage"]]
    block = next(b for b in stage["blocks"] if b["name"] == units[half]["name"])
    assert (block["open"], block["kept"], block["filters"]) == (True, width - width // 2, width)
    first = stage["blocks"][0]  # the stage's projection block always runs, all its filters
    assert not first["gated"] and first["kept"] == first["filters"]
    assert stage["kept_filters"] == sum(b["kept"] for b in stage["blocks"])
    shut = next(b for s in layout["stages"].values() for b in s["blocks"] if b["name"] == names[closed])
    assert shut["kept"] == 0 and not shut["open"]
    assert [f["attention"] for f in layout["fusion"]] == [True, False, True]
    img = draw_subnet(layout, "the red cube")

    def at(rect, fy):  # the colour inside a box at height fraction fy from its top
        x0, y0, x1, y1 = rect
        return img.getpixel(((x0 + x1) // 2, round(y0 + 2 + (y1 - y0 - 4) * fy)))

    assert at(shut["rect"], 0.5) == CLOSED
    assert at(block["rect"], 0.8) == OPEN and at(block["rect"], 0.2) == (255, 255, 255)  # half filled
    assert at(first["rect"], 0.5) == ALWAYS
    assert at(layout["fusion"][1]["attention_rect"], 0.1) == CLOSED
    assert at(layout["fusion"][0]["attention_rect"], 0.1) != CLOSED


def test_predict_explain_on_a_lads_checkpoint_draws_the_subnet(world, tmp_path, cli):
    path, *_ = _lads(world, tmp_path)
    image = sorted((world / "images").glob("*.png"))[0]
    plain, explained = tmp_path / "plain.png", tmp_path / "explained.png"
    assert cli("predict", path, image, "the red cube", "--out", plain).exit_code == 0
    res = cli("predict", path, image, "the red cube", "a small ball", "--explain", "--out", explained)
    assert res.exit_code == 0, res.output
    with Image.open(plain) as a, Image.open(explained) as b:
        assert b.width > a.width + 400 and b.height > 2 * 200  # the picture plus two subnet diagrams


def test_bench_reports_supernet_and_mean_subnet(world, tmp_path, cli):
    from langground.bench.gated import _macs, gated_report

    path, model, vocab, cfg = _lads(world, tmp_path)
    r = gated_report(None, path, size=None, data=world, split="testA", expressions=3, runs=1)
    assert r.expressions == 3 and r.runs == 1 and r.supernet_ms > 0 and r.subnet_ms > 0
    texts = [x.text for x in open_dataset(world, "synth", "testA", **cfg.data.open_kwargs)]
    picked = [texts[round(i * (len(texts) - 1) / 2)] for i in range(3)]
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    macs, full = [], []
    for t in picked:
        batch = vocab.batch([t], cfg.data.max_text_length)
        g, _ = model.explain_gates(batch)
        macs.append(_macs(model, images, batch, g))
        full.append(_macs(model, images, batch, model.open_gates(1)))
    assert r.supernet_macs == round(np.mean(full)) and r.subnet_macs == pytest.approx(np.mean(macs))
    assert r.macs_ratio == pytest.approx(np.mean(macs) / np.mean(full)) and r.macs_ratio < 1
    res = cli("bench", "-c", path, "--data", world, "--split", "testA", "--expressions", "2", "--runs", "1",
              "--warmup", "1", "--threads", "1", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    gated = json.loads(res.stdout)["gated"]
    assert gated["expressions"] == 2 and "synth testA" in gated["source"]
    fallback = gated_report("lads_t", None, size=SIZE, data=None, split=None, expressions=2, runs=1)
    assert fallback.expressions == 2 and "synthetic" in fallback.source
    assert fallback.macs_ratio == pytest.approx(1.0)  # an untrained Gating Network opens every gate
    assert gated_report("laconvnet_t", None, size=SIZE, data=None, split=None, expressions=2) is None
    _one_line_error(cli("bench", "-c", path, "--data", world, "--runs", "1", "--warmup", "1"), "--split")


def test_all_open_switch_trains_the_plain_supernet(world, tmp_path):
    from langground.models.lads import LADS

    path, model, vocab, cfg = _lads(world, tmp_path, gates="open")
    assert isinstance(model, LADS) and model.config.gates == "open"
    images, text = torch.randn(3, 3, SIZE, SIZE), vocab.batch(["the red cube", "a ball", "the cube"], 20)
    out = model.train()(images, text)
    assert "losses" not in out and out["aux"]["gates"]["layer"].eq(1).all()
    out["pred_boxes"].sum().backward()
    assert model.gating.b2.grad is None and model.backbone.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        g, _ = model.explain_gates(text)
        assert g.layer.eq(1).all() and g.filter.eq(1).all()  # even though the heads would close some
        model.config.gates = "learned"
        masked_open = model.forward_with_gates(images, text, model.open_gates(3))["pred_boxes"]
        model.config.gates = "open"
        assert (model(images, text)["pred_boxes"] - masked_open).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="gates must be"):
        LADS(type(model.config)(gates="half"))


def test_masked_equals_extracted_with_trained_gates():
    """Gates from real training steps (Eq. 4-5 straight-through + the MI term), not random ones."""
    from langground.losses import build_criterion
    from langground.registry import create_model
    from langground.types import Targets

    torch.manual_seed(0)
    m = create_model("lads_t", vocab_size=30, input_size=SIZE, dropout=0.0, gate_init=0.5)
    crit = build_criterion("rec", m)
    opt = torch.optim.AdamW(
        [{"params": m.gating.parameters(), "lr": 3e-2}, {"params": [p for n, p in m.named_parameters()
         if not n.startswith("gating.")], "lr": 1e-3}]
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        ids = torch.randint(2, 30, (8, 5), generator=gen)
        text = TextBatch(ids, torch.ones_like(ids, dtype=torch.bool))
        boxes = [torch.rand(1, 2, generator=gen).repeat(1, 2) * torch.tensor([1, 1, 0.5, 0.5]) + 0.25] * 8
        targets = Targets(boxes, None, torch.zeros(8, dtype=torch.bool), torch.zeros(8, dtype=torch.long))
        loss = crit(m.train()(torch.randn(8, 3, SIZE, SIZE, generator=gen), text), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    ids = torch.randint(2, 30, (6, 5), generator=gen)
    text = TextBatch(ids, torch.ones_like(ids, dtype=torch.bool))
    images = torch.randn(6, 3, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        g, *_ = m.gates(text)
        patterns = torch.unique(torch.cat([g.layer, g.filter], 1), dim=0).shape[0]
        assert 0 < g.filter.mean() < 1 and 0 < g.layer.mean() < 1 and patterns > 1  # trained, mixed
        m.config.execution = "masked"
        masked = m(images, text)["pred_boxes"]
        m.config.execution = "subnet"
        mixed = m(images, text)["pred_boxes"]
    assert (mixed - masked).abs().max() <= 1e-5  # a mixed batch, grouped by pattern
    for i in (0, 5):  # batch 1, through extract_subnet
        row = TextBatch(ids[i : i + 1], text.attention_mask[i : i + 1])
        with torch.no_grad():
            assert (m.extract_subnet(row)(images[i : i + 1]) - masked[i : i + 1]).abs().max() <= 1e-5


def test_refcoco_preset_is_the_papers_recipe():
    cfg = load_preset("refcoco-lads-r50-rec")
    assert (cfg.model.name, cfg.transforms.input_size, cfg.data.max_text_length) == ("lads_r50", 512, 40)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-4, 1e-4)
    assert [(g.params, g.lr) for g in cfg.optim.groups] == [
        (["backbone.*"], 1e-5),
        (["text_encoder.bert.*"], 1e-5),
    ]
    assert cfg.loss == {"l1": 1.0, "giou": 1.0, "mi": 0.1}
    assert (cfg.run.epochs, cfg.run.batch_size, cfg.schedule.milestones, cfg.schedule.gamma) == (
        120,
        256,
        [90],
        0.1,
    )
