"""``langground demo`` end to end at toy scale: world -> train -> evaluate -> grid; a second run reuses all."""

from __future__ import annotations

import json

import numpy as np
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
    # The preset ends its run by max_steps / max_minutes, not epochs: without these two the toy demo
    # trained for the preset's full 10 minutes.
    "run.max_steps=24",
    "run.max_minutes=5",
]
STEPS = 24


def _recompute(out_dir, split):
    """Prec@0.5, mIoU and per-family Prec@0.5 of the run's best weights on a whole split, through the public
    Grounder and torchvision's box_iou: independent of the evaluator the demo uses."""
    import numpy as np
    import torch
    from torchvision.ops import box_iou

    from langground.config import load_config
    from langground.engine.builders import open_split
    from langground.inference.grounder import Grounder
    from langground.inference.images import load_image

    records = open_split(load_config(out_dir / "run" / "config.yaml").data, split)
    grounder = Grounder.from_pretrained(out_dir / "run" / "best", device="cpu")
    ious, families = [], {}
    for rec in records:
        (res,) = grounder.predict(load_image(rec.image_path), [rec.text])
        b = res["box"]
        gt = torch.as_tensor(np.asarray(rec.boxes, np.float32).reshape(-1, 4))
        iou = float(box_iou(torch.tensor([[b["xmin"], b["ymin"], b["xmax"], b["ymax"]]]), gt).max())
        ious.append(iou)
        families.setdefault(rec.family, []).append(iou >= 0.5)
    hits = [i >= 0.5 for i in ious]
    per_family = {f: sum(v) / len(v) for f, v in families.items()}
    return len(records), sum(hits) / len(hits), sum(ious) / len(ious), per_family


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
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    # the recipe ran as configured: all its steps, and the figures come from best/, the best validation
    assert (result["status"], result["step"], result["total_steps"], summary["steps"]) == (
        "completed",
        STEPS,
        STEPS,
        STEPS,
    )
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["rec/prec@0.5"] for r in lines if r.get("kind") == "val"}
    assert val and result["best_value"] == max(val.values()) == val[result["best_step"]]
    assert summary["checkpoint"] == str(tmp_path / "run" / "best")
    # the reported figures are what an independent evaluation of those weights gives, on whole splits
    for split in ("testA", "cogentB"):
        fig = summary["splits"][split]
        count, prec, miou, per_family = _recompute(tmp_path, split)
        assert fig["count"] == count > 0, split
        assert fig["prec@0.5"] == pytest.approx(prec, abs=1e-9), split  # a fraction of `count`: exact
        assert fig["miou"] == pytest.approx(miou, abs=1e-3), split  # measured 2e-5 apart (float paths)
        assert fig["per_family_prec@0.5"] == pytest.approx(per_family, abs=1e-9), split
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "metric"), [("res", "res/oiou"), ("gref", "grec/prec@f1"), ("vqa", "vqa/acc")]
)
def test_demo_trains_and_scores_every_task(tmp_path, task, metric):
    _mount()
    args = ["demo", "--task", task, "--out", str(tmp_path), "--examples", "4"]
    for item in TOY:
        args += ["--set", item.replace("run.max_steps=24", "run.max_steps=4")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == task and summary["metric"] == metric and summary["bar"] is None
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "val" and metric in r for r in lines)  # the preset trained this task
    for split in ("testA", "cogentB"):
        fig = summary["splits"][split]
        assert fig["metric"] == metric and 0.0 <= fig["value"] <= 1.0 and fig["count"] > 0
        assert fig["metrics"][metric] == fig["value"]
        assert fig["per_family"] and all(0.0 <= v <= 1.0 for v in fig["per_family"].values())
    assert "bar (" not in res.stdout  # the 90% bar is REC's
    with Image.open(tmp_path / "predictions_grid.png") as grid:
        assert grid.width > 4 * 100


def test_demo_rejects_an_unknown_task(tmp_path):
    _mount()
    res = CliRunner().invoke(app, ["demo", "--task", "caption", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--task 'caption': expected one of rec, res, gref, vqa" in res.output


def test_tile_verdicts_count_every_referent_and_no_target():
    from langground.cli.demo import _tile_verdict

    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    assert _tile_verdict([[0, 0, 10, 10], [20, 20, 30, 30]], gt, False) == (True, "2/2 found, 2 box(es)")
    assert _tile_verdict([[0, 0, 10, 10]], gt, False)[0] is False  # one referent missed
    assert _tile_verdict([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], gt, False)[0] is False
    assert _tile_verdict([[1, 1, 10, 10]], gt[:1], False) == (True, "IoU 0.81")
    assert _tile_verdict([], np.zeros((0, 4), np.float32), True) == (True, "no target: none predicted")
    assert _tile_verdict([[0, 0, 5, 5]], np.zeros((0, 4), np.float32), True)[0] is False


def test_mask_tiles_are_judged_by_mask_iou():
    from langground.cli.demo import _mask_verdict

    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 2:6] = 1
    pred = np.zeros((10, 10), np.uint8)
    pred[2:6, 2:5] = 255  # 12 of the 16 pixels, nothing else
    assert _mask_verdict(pred, truth) == (True, "mask IoU 0.75")
    pred[:, :] = 255  # everything: the box would contain the referent, the mask IoU says miss
    assert _mask_verdict(pred, truth) == (False, "mask IoU 0.16")
    assert _mask_verdict(None, truth) == (False, "no mask")
