import json

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from langground.bench import benchmark_model, count_macs
from langground.bench.core import BENCH_VOCAB
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
    """Table 2: what `langground bench --model NAME --task rec --size 416` reports, with a 10,000-word
    300-d embedding and the REC head: params within 5% of the paper, MACs within 10%."""
    r = benchmark_model(name, task="rec", size=416, runs=1, warmup=1, threads=1)
    assert (r.task, r.size, r.batch) == ("rec", 416, 1)
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
