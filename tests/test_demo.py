"""``langground demo`` end to end at toy scale: world -> train -> evaluate -> grid; a second run reuses all."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from langground.cli import _mount, app

TOY = [
    "data.synth.images=48",
    "data.synth.size=[96, 72]",
    "data.synth_workers=1",
    "transforms.input_size=64",
    "run.epochs=1",
    "run.batch_size=8",
    "run.num_workers=0",
    "run.eval_interval=1",
    "run.tensorboard=false",
    "run.progress=false",
    "data.eval_limit=16",
]


@pytest.mark.slow
def test_demo_runs_and_resumes(tmp_path):
    _mount()
    runner = CliRunner()
    args = ["demo", "--out", str(tmp_path), "--examples", "4"]
    for item in TOY:
        args += ["--set", item]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "generated" in first.stdout and "testA" in first.stdout and "cogentB" in first.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    for split in ("testA", "cogentB"):
        fig = summary["splits"][split]
        assert 0.0 <= fig["prec@0.5"] <= 1.0 and fig["count"] > 0 and fig["per_family_prec@0.5"]
    with Image.open(tmp_path / "predictions_grid.png") as grid:
        assert grid.width > 4 * 100 and grid.height > 100
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "reused" in second.stdout and "reusing the finished run" in second.stdout
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ckpts
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["splits"] == summary["splits"]


def test_demo_refuses_an_unwritable_directory(tmp_path):
    _mount()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["demo", "--out", str(blocker / "demo")])
    assert res.exit_code == 2 and "file" in res.stderr
    assert blocker.read_text() == "x"


def test_run_state_decides_fresh_resume_or_done(tmp_path):
    import torch

    from langground.cli.demo import _run_state
    from langground.config import load_preset, save_config
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint, step_dir_name
    from langground.errors import LanggroundError
    from langground.text.vocab import Vocabulary

    cfg = load_preset("synth-laconvnet-t-rec", ["transforms.input_size=64"])
    run = tmp_path / "run"
    assert _run_state(run, cfg) == "fresh"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")  # stopped before its first checkpoint
    assert _run_state(run, cfg) == "fresh" and not run.exists()

    run.mkdir()
    save_config(cfg, run / "config.yaml")
    vocab = Vocabulary.build(["a red cube"])
    save_checkpoint(
        run / "checkpoints" / step_dir_name(5),
        model=build_model(cfg, vocab),
        config=cfg,
        vocab=vocab,
        trainer_state={"step": torch.tensor(5)},
    )
    assert _run_state(run, cfg) == "resume"
    (run / "result.json").write_text(json.dumps({"status": "completed", "step": 9, "total_steps": 9}))
    assert _run_state(run, cfg) == "done"
    longer = load_preset("synth-laconvnet-t-rec", ["transforms.input_size=64", "run.epochs=99"])
    assert _run_state(run, longer) == "resume"  # more epochs: continue the run
    other = load_preset("synth-laconvnet-t-rec", ["transforms.input_size=96"])
    with pytest.raises(LanggroundError, match="another config"):
        _run_state(run, other)
