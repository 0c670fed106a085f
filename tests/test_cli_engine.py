"""``langground presets`` / ``train`` / ``eval`` on the command line, and one-line errors (exit code 2)
that overwrite nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from langground.cli import _mount, app
from langground.config import list_presets, load_preset
from langground.data import open_dataset
from langground.data.synthetic import QUESTION_FAMILIES, SynthConfig, generate_world
from langground.engine import checkpoint as ckpt_io
from langground.engine.builders import build_answers, build_model, build_vocab
from langground.engine.logging import read_jsonl
from langground.ops.boxes import box_iou
from tiny_config import TINY_MODEL, TINY_RUN

TINY = [
    *TINY_MODEL,
    *TINY_RUN,
    "run.save_steps=2",
    "run.max_steps=4",
    "data.train_limit=12",
]


@pytest.fixture(scope="module")
def cli():
    _mount()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def sets(*items: str) -> list[str]:
    out: list[str] = []
    for item in items:
        out += ["--set", item]
    return out


def one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def flat(text: str) -> str:
    """Console text without table borders and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synth"
    return generate_world(root, SynthConfig(images=24, size=(96, 72), seed=0), workers=1)


@pytest.fixture(scope="module")
def run_dir(cli, world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    res = cli("train", "--preset", "synth-laconvnet-t-rec", *sets(f"data.root={world}", *TINY), "--out", out)
    assert res.exit_code == 0, res.output
    assert "completed" in res.stdout and "best checkpoint" in res.stdout
    return out


# ------------------------------------------------------------------------------------------- presets


def test_presets_lists_and_resolves(cli):
    res = cli("presets")
    assert res.exit_code == 0
    for name in list_presets():
        assert name in res.stdout
    res = cli("presets", "synth-laconvnet-t-vqa", "--set", "run.epochs=3")
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.stdout)
    assert shown["run"]["epochs"] == 3 and shown["model"]["task"] == "vqa"
    assert shown == yaml.safe_load(
        __import__("langground.config", fromlist=["config_to_yaml"]).config_to_yaml(
            load_preset("synth-laconvnet-t-vqa", ["run.epochs=3"])
        )
    )
    one_line_error(cli("presets", "--set", "run.epochs=3"), "--set needs a preset NAME")
    one_line_error(cli("presets", "nope"), "unknown preset 'nope'")


# --------------------------------------------------------------------------------------------- train


def test_train_writes_a_complete_run_directory(run_dir, world):
    cfg = load_preset("synth-laconvnet-t-rec", [f"data.root={world}", *TINY])
    assert load_preset(str(run_dir / "config.yaml")) == cfg
    assert [p.name for p in ckpt_io.list_checkpoints(run_dir)] == ["step-00000002", "step-00000004"]
    assert (run_dir / "best" / "model.safetensors").is_file()
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3, 4]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_resume_continues_a_run_from_the_command_line(cli, run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    res = cli("train", "--resume", copy, "--set", "run.max_steps=6")
    assert res.exit_code == 0, res.output
    assert ckpt_io.latest_checkpoint(copy).name == "step-00000006"
    assert [r["step"] for r in read_jsonl(copy / "metrics.jsonl") if r["kind"] == "train"] == list(
        range(1, 7)
    )
    one_line_error(cli("train", "--resume", copy, "--set", "optim.lr=0.5"), "started with another config")
    one_line_error(cli("train", "--resume", tmp_path), "cannot resume: not a run directory")


def test_resume_flag_continues_the_run_in_out_as_the_readme_says(cli, world, run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    preset = ["--preset", "synth-laconvnet-t-rec", *sets(f"data.root={world}", *TINY)]
    res = cli("train", *preset, "--set", "run.max_steps=6", "--out", copy, "--resume")
    assert res.exit_code == 0, res.output
    assert ckpt_io.latest_checkpoint(copy).name == "step-00000006"
    assert f"resuming {copy} from step 4/6" in res.stderr
    one_line_error(cli("train", *preset, "--resume"), "--resume needs the run directory")
    one_line_error(cli("train", "--resume", copy, "--out", tmp_path / "x"), "name different run directories")
    one_line_error(cli("train", *preset, copy), "a run directory argument is for --resume")


def test_resuming_a_finished_run_is_refused_with_what_to_raise(cli, run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = digest(copy)
    one_line_error(
        cli("train", "--resume", copy),
        f"{copy}: cannot resume: the run is complete (step 4/4)",
        "run.max_steps",
    )
    assert digest(copy) == before  # nothing trained, evaluated or rewritten


def test_a_run_stopped_on_its_time_limit_says_so_and_resumes_only_with_more_time(cli, world, tmp_path):
    out = tmp_path / "run"
    limited = [*TINY, "run.max_minutes=1e-9", "run.progress=true"]
    res = cli(
        "train", "--preset", "synth-laconvnet-t-rec", *sets(f"data.root={world}", *limited), "--out", out
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "result.json").read_text())["status"] == "time_limit"
    assert "time_limit" in res.stdout and "--set run.max_minutes=M" in flat(res.stdout)
    # the ETA is the budget's (spent at once), not the steps'
    assert "step 1/4" in res.stderr and "ETA 0:00:00 (time limit)" in res.stderr
    before = digest(out)
    line = one_line_error(
        cli("train", "--resume", out),
        "cannot resume: the run stopped on its time limit (run.max_minutes=1e-09",
    )
    assert "--set run.max_minutes=M" in line and "step 1/4" in line
    assert digest(out) == before
    res = cli("train", "--resume", out, "--set", "run.max_minutes=60")
    assert res.exit_code == 0, res.output
    assert "time budget run.max_minutes=60" in res.stderr and "min left" in res.stderr
    assert json.loads((out / "result.json").read_text())["status"] == "completed"
    assert ckpt_io.latest_checkpoint(out).name == "step-00000004"
    assert "ETA" in res.stderr and "(steps)" in res.stderr  # 60 minutes: the steps end first


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("model.kwargs.wings=2", "unknown LaConvNet option(s) wings"),
        ("loss.foo=1.0", "config loss: unknown loss weight or option 'foo'"),
    ],
)
def test_a_bad_config_fails_before_the_synthetic_world_is_generated(cli, tmp_path, item, needle):
    root = tmp_path / "data" / "synth"
    small = ["data.synth.images=24", "data.synth.size=[96, 72]", "data.synth_workers=1"]
    args = ["train", "--preset", "synth-laconvnet-t-rec", *sets(f"data.root={root}", *TINY, *small)]
    one_line_error(cli(*args, "--set", item, "--out", tmp_path / "run"), needle)
    assert not root.exists() and not any((tmp_path / "data").glob(".*"))  # no world, no half-written one


def test_training_says_that_it_generates_the_synthetic_world(cli, tmp_path):
    root = tmp_path / "data" / "synth"
    small = ["data.synth.images=24", "data.synth.size=[96, 72]", "data.synth_workers=1"]
    res = cli(
        "train",
        "--preset",
        "synth-laconvnet-t-rec",
        *sets(f"data.root={root}", *TINY, *small, "run.max_steps=1"),
        "--out",
        tmp_path / "run",
    )
    assert res.exit_code == 0, res.output
    assert f"generating the synthetic world in {root}: 24 images of 96x72" in " ".join(res.stderr.split())
    assert f"generated 24 images in {root}" in " ".join(res.stderr.split())
    assert (root / "dataset.json").is_file()


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("run.epoch=3", "--set run.epoch=3: unknown config key 'run.epoch' (did you mean 'epochs'?)"),
        ("run.batch_size=many", "config key 'run.batch_size' = 'many': expected int"),
        ("loss.foo=1.0", "config loss: unknown loss weight or option 'foo' for task 'rec'"),
        ("model.kwargs.wings=2", "unknown LaConvNet option(s) wings"),
        ("model.name=resnet", "config model.name='resnet': not a registered model"),
    ],
)
def test_train_rejects_bad_config_in_one_line(cli, world, tmp_path, item, needle):
    out = tmp_path / "run"
    res = cli(
        "train", "--preset", "synth-laconvnet-t-rec", *sets(f"data.root={world}", *TINY, item), "--out", out
    )
    one_line_error(res, needle)
    assert not out.exists() or not any(out.iterdir())  # no run directory content


def test_train_refuses_to_overwrite_or_to_write_nowhere(cli, world, run_dir, tmp_path):
    before = digest(run_dir)
    args = ["train", "--preset", "synth-laconvnet-t-rec", *sets(f"data.root={world}", *TINY)]
    one_line_error(cli(*args, "--out", run_dir), str(run_dir), "run directory is not empty")
    assert digest(run_dir) == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(cli(*args, "--out", blocker / "run"), str(blocker / "run"), "cannot create run directory")
    one_line_error(cli(*args, "--out", blocker), "run directory is a file")
    assert blocker.read_text() == "x"


def test_train_on_a_data_dir_of_the_wrong_layout(cli, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a dataset")
    res = cli(
        "train",
        "--preset",
        "synth-laconvnet-t-rec",
        *sets(f"data.root={junk}", *TINY),
        "--out",
        tmp_path / "run",
    )
    one_line_error(res, str(junk))
    assert (junk / "notes.txt").read_text() == "not a dataset" and sorted(p.name for p in junk.iterdir()) == [
        "notes.txt"
    ]


def test_train_stops_on_a_diverging_loss(cli, world, tmp_path):
    blow_up = ["optim.lr=1e30", "schedule.warmup_epochs=0", "run.clip_grad_norm=null", "run.save_steps=1"]
    out = tmp_path / "run"
    res = cli(
        "train",
        "--preset",
        "synth-laconvnet-t-rec",
        *sets(f"data.root={world}", *TINY, *blow_up),
        "--out",
        out,
    )
    assert res.exit_code == 1, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "last good checkpoint" in errors[0]
    last = ckpt_io.latest_checkpoint(out)
    assert last is not None and str(last) in errors[0]


# ---------------------------------------------------------------------------------------------- eval


def test_eval_reports_metrics_per_family_and_saves_predictions(cli, run_dir, world, tmp_path):
    preds = tmp_path / "preds.jsonl"
    res = cli("eval", run_dir, "--data", world, "--split", "testA", "--json", "--save-predictions", preds)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    records = open_dataset(world, "synth", "testA", task="rec")
    scored = [r for r in records if not r.no_target]
    assert (out["split"], out["task"], out["main_metric"]) == ("testA", "rec", "rec/prec@0.5")
    metrics = out["metrics"]
    assert metrics["rec/count"] == len(scored) and out["main_value"] == metrics["rec/prec@0.5"]
    families = {r.family for r in scored}
    assert {k.rsplit("/", 1)[1] for k in metrics if k.startswith("rec/prec@0.5/family/")} == families

    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == [r.sample_id for r in records]
    per_family = defaultdict(list)
    for row, record in zip(rows, records, strict=True):
        assert row["text"] == record.text and row["family"] == record.family
        gt = torch.as_tensor(record.boxes, dtype=torch.float64).reshape(-1, 4)
        torch.testing.assert_close(
            torch.tensor(row["gt_boxes"], dtype=torch.float64).reshape(-1, 4), gt, rtol=0, atol=0.01
        )
        h, w = record.image_size
        (x0, y0, x1, y1), *_ = row["boxes"]
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h  # original pixels
        assert len(row["boxes"]) == len(row["scores"])
        if not record.no_target:
            iou = box_iou(torch.tensor(row["boxes"][:1]), torch.tensor(row["gt_boxes"][:1]))[0, 0]
            per_family[record.family].append(float(iou))
    for family, ious in per_family.items():
        assert metrics[f"rec/count/family/{family}"] == len(ious)
        assert metrics[f"rec/miou/family/{family}"] == pytest.approx(sum(ious) / len(ious), abs=0.02)

    table = cli("eval", run_dir / "best", "--data", world, "--split", "testA")
    assert table.exit_code == 0 and "rec/prec@0.5" in table.stdout and "attribute" in table.stdout


def test_eval_of_a_vqa_checkpoint_reports_question_families(cli, world, tmp_path):
    cfg = load_preset("synth-laconvnet-t-vqa", [f"data.root={world}", *TINY])
    train_records = open_dataset(world, "synth", "train", task="vqa")
    answers = build_answers(train_records)
    vocab = build_vocab(train_records, cfg.data)
    torch.manual_seed(0)
    ckpt = ckpt_io.save_checkpoint(
        tmp_path / "vqa", model=build_model(cfg, vocab, answers), config=cfg, vocab=vocab, answers=answers
    )
    res = cli("eval", ckpt, "--data", world, "--split", "val", "--json")
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)["metrics"]
    val = open_dataset(world, "synth", "val", task="vqa")
    assert metrics["vqa/count"] == len(val) and 0.0 <= metrics["vqa/acc"] <= 1.0
    families = {k.rsplit("/", 1)[1] for k in metrics if k.startswith("vqa/acc/family/")}
    assert families == {r.family for r in val} and families <= set(QUESTION_FAMILIES)


def test_res_eval_prints_the_tasks_own_metric_first_and_names_derived_ones(cli, world, tmp_path):
    cfg = load_preset("synth-laconvnet-t-res", [f"data.root={world}", *TINY])
    vocab = build_vocab(open_dataset(world, "synth", "train", task="rec"), cfg.data)
    torch.manual_seed(0)
    ckpt = ckpt_io.save_checkpoint(tmp_path / "res", model=build_model(cfg, vocab), config=cfg, vocab=vocab)
    res = cli("eval", ckpt, "--data", world, "--split", "val", "--limit", "6")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("synth val (res): res/oiou = ") and "primary metric of task res" in lines[0]
    rows = [flat(line) for line in lines if line.startswith("│")]
    first = next(i for i, r in enumerate(rows) if r.startswith("res "))
    assert rows[first].startswith("res oiou ")  # the headline row leads the table
    derived = [i for i, r in enumerate(rows) if r.startswith("rec (derived) ")]
    assert derived and min(derived) > max(i for i, r in enumerate(rows) if r.startswith("res "))
    assert not any(r.startswith("rec ") and not r.startswith("rec (derived)") for r in rows)
    assert "derived: rec/*" in flat(res.stdout) and "the task's own metric is res/oiou" in flat(res.stdout)
    as_json = json.loads(
        cli("eval", ckpt, "--data", world, "--split", "val", "--limit", "6", "--json").stdout
    )
    assert as_json["main_metric"] == "res/oiou" and "rec/prec@0.5" in as_json["metrics"]


def test_eval_bad_input_is_one_line_and_overwrites_nothing(cli, run_dir, world, tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text("old\n")
    ev = lambda ckpt, data, *more: cli(
        "eval", ckpt, "--data", data, "--split", "testA", "--save-predictions", preds, *more
    )

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "dataset.json").write_text("[1, 2")
    one_line_error(ev(run_dir, junk), str(junk))
    one_line_error(ev(run_dir, tmp_path / "nowhere"), str(tmp_path / "nowhere"), "does not exist")
    one_line_error(cli("eval", run_dir, "--data", world, "--split", "nope"), "unknown split 'nope'")
    one_line_error(ev(tmp_path / "no-ckpt", world), "no such checkpoint")

    # a checkpoint whose config names another model / whose weights miss keys
    other = tmp_path / "other"
    shutil.copytree(run_dir / "best", other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["model"]["name"] = "laconvnet_s"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    one_line_error(ev(other, world), str(other), "holds weights of model 'laconvnet_t'")
    missing = tmp_path / "missing"
    shutil.copytree(run_dir / "best", missing)
    tensors = load_file(str(missing / "model.safetensors"))
    meta = ckpt_io.read_metadata(missing)
    save_file(
        {k: v for k, v in tensors.items() if "box_head" not in k}, str(missing / "model.safetensors"), meta
    )
    one_line_error(ev(missing, world), "missing keys box_head.")

    # an unwritable predictions file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(
        cli("eval", run_dir, "--data", world, "--split", "testA", "--save-predictions", blocker / "p.jsonl"),
        str(blocker / "p.jsonl"),
        "is a file, not a folder",
    )

    # an image that does not decode, read in this process and in a loader worker
    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    image = Path(open_dataset(broken, "synth", "testA", task="rec")[0].image_path)
    image.write_bytes(b"this is not a PNG")
    one_line_error(ev(run_dir, broken), str(image), "image fails to decode (record")
    one_line_error(ev(run_dir, broken, "--workers", "1"), str(image), "image fails to decode (record")
    assert preds.read_text() == "old\n"
    assert blocker.read_text() == "x"


def test_evaluate_picks_the_mask_threshold_on_a_split(cli, world, tmp_path):
    from langground.engine.metrics.threshold_sweep import DMN_GRID, pick_mask_threshold

    out = tmp_path / "res"
    res = cli("train", "--preset", "synth-laconvnet-t-res", *sets(f"data.root={world}", *TINY), "--out", out)
    assert res.exit_code == 0, res.output
    res = cli("eval", out, "--data", world, "--split", "val", "--pick-threshold-on", "val", "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    sweep = pick_mask_threshold(out, world, "val")
    assert payload["mask_threshold"] == sweep["best_threshold"] and sweep["best_threshold"] in DMN_GRID
    assert payload["metrics"]["res/oiou"] == pytest.approx(sweep["best"]["res/oiou"], abs=1e-9)
    assert payload["metrics"]["res/oiou"] >= max(sweep["oiou"]) - 1e-9  # the best of the grid
    args = ("eval", out, "--data", world, "--split", "val", "--mask-threshold", "0.3")
    one_line_error(cli(*args, "--pick-threshold-on", "val"), "give one of them, not both")


@pytest.mark.parametrize(("task", "derived"), [("res", {"rec"}), ("recres", set())])
def test_the_eval_table_names_only_derived_families_derived(task, derived):
    from rich.console import Console

    from langground.cli.engine import print_eval_result
    from langground.engine.evaluate import EvalResult

    metrics = {"rec/prec@0.5": 0.5, "rec/count": 4.0, "res/oiou": 0.4, "res/miou": 0.3, "res/count": 4.0}
    out = Console(record=True, width=200)
    print_eval_result(EvalResult(metrics, task), out)
    text = out.export_text()
    assert ("rec (derived)" in text) == ("rec" in derived) and "res (derived)" not in text
    assert ("derived: rec/*" in text) == bool(derived)
