import json

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from langground.bench import benchmark_model, count_macs
from langground.bench.core import BENCH_VOCAB
from langground.bench.measure import measure_memory
from langground.cli.bench import bench
from langground.layers import DynamicConv
from langground.registry import create_model


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.dyn = DynamicConv(5)
        self.rnn = nn.LSTM(6, 10, batch_first=True)

    def forward(self, x, w, t):
        return self.dyn(self.conv(x), w), self.rnn(t)


def test_count_macs_adds_the_operator_and_rnn_formulas():
    x = torch.randn(2, 4, 6, 7)
    w = torch.randn(2, 2, 25, 6, 7)
    t = torch.randn(2, 3, 6)
    report = count_macs(_Toy(), x, w, t)
    conv = 2 * 8 * 6 * 7 * 4 * 9
    laconv = 2 * 8 * 6 * 7 * 25  # N*C*H*W*k^2
    lstm = 2 * 3 * 4 * 10 * (6 + 10)
    assert report.explicit == {"DynamicConv": laconv, "LSTM": lstm}
    assert report.total == conv + laconv + lstm
    assert report.flops == 2 * report.total
    assert report.by_module == {"conv": conv, "dyn": laconv, "rnn": lstm}


@pytest.mark.slow
@pytest.mark.parametrize("name, params, macs", [("laconvnet_s", 24e6, 8.9e9), ("laconvnet_b", 35e6, 14.5e9)])
def test_paper_budgets_of_s_and_b(name, params, macs):
    """Table 2: what `langground bench --model NAME --task rec --size 416` reports, with the model's default
    10,000-word 300-d embedding and the REC head: params within 5% of the paper, MACs within 10%."""
    r = benchmark_model(name, task="rec", size=416, runs=1, warmup=1, threads=1)
    assert (r.task, r.size, r.batch, r.vocab_size) == ("rec", 416, 1, BENCH_VOCAB)
    assert abs(r.params / params - 1) < 0.05, (name, r.params)
    assert abs(r.macs / macs - 1) < 0.10, (name, r.macs)
    assert r.flops == 2 * r.macs
    assert {"text_encoder", "backbone", "neck", "box_head"} <= set(r.macs_by_module)
    assert r.macs_by_formula["DynamicConv"] > 0 and r.macs_by_formula["LSTM"] > 0
    m = create_model(name, vocab_size=BENCH_VOCAB)  # the model the bench built
    assert BENCH_VOCAB == 10000 and m.text_encoder.embedding.weight.shape == (10000, 300)
    assert sum(p.numel() for p in m.parameters()) == r.params


# Tab. 10 ablation budgets: tests/test_models_laconvnet.py::test_table10_ablation_budgets_of_s (exact
# shape arithmetic, MAC tolerances tighter than each ablation's effect).


def test_benchmark_model_tiny():
    r = benchmark_model("laconvnet_t", size=64, runs=2, warmup=1, threads=1)
    assert r.params > 1e5 and r.macs > 0 and r.flops == 2 * r.macs
    assert r.latency_ms > 0 and r.peak_rss_delta_mb >= 0
    assert set(r.macs_by_module) >= {"backbone", "text_encoder"}
    r2 = benchmark_model(
        "laconvnet_t", task="vqa", size=64, runs=1, warmup=1, threads=1, dtype="bf16", channels_last=True
    )
    assert r2.dtype == "bf16" and r2.macs > 0


def _app():
    app = typer.Typer()
    app.command("bench")(bench)
    app.command("noop")(lambda: None)  # keep "bench" a sub-command like in the real CLI
    return app


def test_cli_json_and_table():
    runner = CliRunner()
    res = runner.invoke(
        _app(), ["bench", "--model", "laconvnet_t", "--size", "64", "--runs", "1", "--warmup", "1", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["model"] == "laconvnet_t" and data["macs"] > 0 and data["flops"] == 2 * data["macs"]
    res = runner.invoke(
        _app(), ["bench", "--model", "laconvnet_t", "--size", "64", "--runs", "1", "--warmup", "1"]
    )
    assert res.exit_code == 0 and "MACs" in res.output and "papers' FLOPs" in res.output


@pytest.mark.parametrize(
    "args, message",
    [(["--model", "nope"], "unknown model"), (["--model", "laconvnet_t", "--size", "50"], "multiple of 32")],
)
def test_cli_user_errors_exit_2(args, message):
    res = CliRunner().invoke(_app(), ["bench", *args, "--runs", "1"])
    assert res.exit_code == 2
    assert message in res.output


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_device_without_cuda_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = lambda device: CliRunner().invoke(_app(), ["bench", "--model", "laconvnet_t", "--device", device])
    _one_line_error(run("cuda"), "--device 'cuda'", "CUDA is not available")
    _one_line_error(run("cuda:1"), "CUDA is not available")
    _one_line_error(run("tpu"), "--device 'tpu'", "expected cpu, cuda or cuda:N")


# ------------------------------------------------------------------------------------------ memory


def test_measure_memory_sees_the_allocator_peak_not_the_reused_heap():
    mib = 2**20

    def temporary():  # 32 MiB allocated and freed inside the call, a small result kept
        a = torch.ones(8 * mib)
        return a.sum().reshape(1)

    def kept():  # 16 MiB result
        return torch.ones(4 * mib)

    for _ in range(2):  # the second time the heap already holds the freed pages: the RSS would not move
        peak = measure_memory(temporary)
        assert peak.method == "torch.profiler"
        assert 32 * mib <= peak.peak_bytes < 33 * mib and peak.retained_bytes < mib
        out = measure_memory(kept)
        assert 16 * mib <= out.peak_bytes < 17 * mib and 16 * mib <= out.retained_bytes < 17 * mib
    assert peak.rss_delta_bytes > 16 * mib  # after malloc_trim the touched pages count again


def test_bench_peak_memory_grows_with_the_input_and_excludes_the_weights():
    small = benchmark_model("laconvnet_t", size=128, runs=1, warmup=1, threads=1)
    large = benchmark_model("laconvnet_t", size=256, runs=1, warmup=1, threads=1)
    # activations scale with the pixels (4x); the old RSS reading was ~5 MiB whatever the size
    assert 3.0 < large.peak_activation_mb / small.peak_activation_mb < 4.5, (small, large)
    # at least the first stage's output: 16 channels at stride 2 of 256^2, fp32
    assert large.peak_activation_mb > 16 * 128 * 128 * 4 / 2**20
    assert large.weights_mb == small.weights_mb and large.memory_method == "torch.profiler"


# -------------------------------------------------------------------------------- vocabulary, checkpoint


def test_bench_uses_the_models_default_vocabulary_or_the_one_given():
    default = benchmark_model("laconvnet_t", size=64, runs=1, warmup=1, threads=1)
    model = create_model("laconvnet_t")
    assert (default.vocab_size, default.vocab_source) == (100, "laconvnet_t's default")
    assert default.params == sum(p.numel() for p in create_model("laconvnet_t", input_size=64).parameters())
    assert round(default.params / 1e6, 1) == 1.1  # the README's models table
    big = benchmark_model("laconvnet_t", size=64, runs=1, warmup=1, threads=1, vocab_size=10000)
    word_dim = model.text_encoder.embedding.weight.shape[1]
    assert (big.vocab_size, big.vocab_source) == (10000, "--vocab-size")
    assert big.params - default.params == (10000 - 100) * word_dim


@pytest.fixture
def checkpoint(tmp_path):
    from langground.config import load_preset
    from langground.engine import checkpoint as ckpt_io
    from langground.engine.builders import build_model
    from langground.text.vocab import Vocabulary
    from tiny_config import TINY_MODEL

    cfg = load_preset("synth-laconvnet-t-res", TINY_MODEL)
    vocab = Vocabulary.build(["the red cube", "a small ball left of it"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    path = ckpt_io.save_checkpoint(tmp_path / "ckpt", model=model, config=cfg, vocab=vocab)
    return path, model, vocab


def test_bench_a_checkpoint(checkpoint):
    path, model, vocab = checkpoint
    r = benchmark_model(checkpoint=path, runs=1, warmup=1, threads=1, batch=2)
    assert (r.model, r.task, r.size, r.vocab_size) == ("laconvnet_t", "res", 64, len(vocab))
    assert r.params == sum(p.numel() for p in model.parameters()) and r.checkpoint == str(path)
    assert r.vocab_source == f"checkpoint {path}"
    assert r.latency_per_sample_ms == pytest.approx(r.latency_ms / 2)
    res = CliRunner().invoke(_app(), ["bench", "--checkpoint", str(path), "--runs", "1", "--warmup", "1"])
    assert res.exit_code == 0, res.output
    assert "laconvnet_t · res · 64x64" in res.output and f"{len(vocab)} words (checkpoint" in res.output
    run = lambda *args: CliRunner().invoke(_app(), ["bench", "--checkpoint", str(path), *args])
    _one_line_error(run("--task", "rec"), "--task rec", "trained for task 'res'")
    _one_line_error(run("--vocab-size", "50"), "drop --vocab-size")
    _one_line_error(run("--model", "laconvnet_s"), "holds a 'laconvnet_t' model")


def test_cli_table_says_vocabulary_latency_per_batch_and_sample_and_memory():
    res = CliRunner().invoke(
        _app(),
        ["bench", "--model", "laconvnet_t", "--size", "64", "--batch", "2", "--runs", "1", "--warmup", "1"],
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "100 words (laconvnet_t's default" in out
    assert "latency per batch of 2" in out and "latency per sample" in out
    assert "peak activations" in out and "CPU allocator events" in " ".join(out.replace("│", " ").split())
    res = CliRunner().invoke(
        _app(), ["bench", "--model", "laconvnet_t", "--size", "64", "--batch", "2", "--runs", "1", "--json"]
    )
    data = json.loads(res.output)
    assert data["latency_per_sample_ms"] == pytest.approx(data["latency_ms"] / 2)
    assert data["vocab_size"] == 100 and data["peak_activation_mb"] > 0
