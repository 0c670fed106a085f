"""``langground --version``, ``langground models`` and the help that points at it."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import langground
from langground.bench.core import describe_models
from langground.cli import _mount, app
from langground.registry import create_model, list_models


@pytest.fixture(scope="module")
def cli():
    _mount()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_version(cli):
    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"langground {langground.__version__}"


def test_describe_models_gives_each_models_tasks_and_default_parameters():
    infos = {info.name: info for info in describe_models()}
    assert set(infos) == set(list_models())
    tiny = create_model("laconvnet_t")  # a real build at the defaults: the meta-device count must agree
    assert (
        infos["laconvnet_t"].tasks
        == type(tiny).supported_tasks
        == ("rec", "res", "recres", "gref", "gres", "vqa")
    )
    assert infos["laconvnet_t"].params == sum(p.numel() for p in tiny.parameters())
    assert infos["laconvnet_t"].vocab_size == tiny.vocab_size == 100
    # the README's models table: S and B at their default 10,000-word vocabulary
    assert (infos["laconvnet_s"].params, infos["laconvnet_s"].vocab_size) == (23_780_161, 10_000)
    assert (infos["laconvnet_b"].params, infos["laconvnet_b"].vocab_size) == (35_107_021, 10_000)
    for info in infos.values():  # every model says which tasks it takes, counted or not
        assert info.tasks and info.description


def test_models_command_lists_them(cli):
    res = cli("models")
    assert res.exit_code == 0, res.output
    rows = {  # first line of each row: name, tasks, params, vocab (never wrapped)
        cells[0]: cells[1:4]
        for line in res.stdout.splitlines()
        if line.startswith("│ ") and (cells := [c.strip() for c in line.strip("│").split("│")])[0]
    }
    assert set(rows) == set(list_models())
    assert rows["laconvnet_s"] == ["rec, res, recres, gref, gres, vqa", "23.78M", "10,000"]
    assert rows["laconvnet_t"] == ["rec, res, recres, gref, gres, vqa", "1.10M", "100"]
    quick = cli("models", "--no-params")
    assert (
        quick.exit_code == 0
        and "rec, res, recres, gref, gres, vqa" in quick.stdout
        and "23.78M" not in quick.stdout
    )


def test_models_without_params_builds_nothing(cli, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("built a model")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_build)
    infos = describe_models(count_params=False)
    assert all(info.params is None and info.tasks for info in infos)


def test_bench_help_points_at_the_model_list(cli):
    res = cli("bench", "--help")
    assert res.exit_code == 0 and "langground models" in flat(res.stdout)
    assert "langground bench --help" not in flat(res.stdout)
