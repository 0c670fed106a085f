"""``langground predict``: pictures, JSON, --explain, and one-line errors (exit 2) that overwrite nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from langground.cli import _mount, app

TEXTS = ["the red cube left of the blue ball", "small green cylinder"]


def make_checkpoint(path: Path, preset: str = "synth-laconvnet-t-rec", size: int = 64) -> Path:
    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint
    from langground.text.vocab import Vocabulary

    cfg = load_preset(preset, [f"transforms.input_size={size}"])
    vocab = Vocabulary.build(TEXTS)
    torch.manual_seed(0)
    return save_checkpoint(path, model=build_model(cfg, vocab), config=cfg, vocab=vocab)


@pytest.fixture(scope="module")
def cli():
    _mount()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "rec")


@pytest.fixture()
def image(tmp_path) -> Path:
    arr = np.random.default_rng(1).integers(0, 256, (70, 120, 3), dtype=np.uint8)
    path = tmp_path / "scene.jpg"
    Image.fromarray(arr).save(path)
    return path


def test_predict_writes_picture_and_json(cli, ckpt, image, tmp_path):
    out = tmp_path / "pics" / "pred.png"
    res = cli("predict", ckpt, image, "the red cube", "a green cylinder", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["width"], data["height"]) == (120, 70) and len(data["results"]) == 2
    for r in data["results"]:
        b = r["box"]
        assert 0 <= b["xmin"] <= b["xmax"] <= 120 and 0 <= b["ymin"] <= b["ymax"] <= 70
    with Image.open(out) as pic:  # the image in its own pixels (+ a legend strip when labels do not fit)
        assert pic.width == 120 and pic.height >= 70
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_predict_explain_adds_attention_rows(cli, ckpt, image, tmp_path):
    plain, explained = tmp_path / "a.png", tmp_path / "b.png"
    assert cli("predict", ckpt, image, "the red cube", "--out", plain).exit_code == 0
    res = cli("predict", ckpt, image, "the red cube", "--out", explained, "--explain", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"][0]["words"] == ["the", "red", "cube"]
    with Image.open(plain) as a, Image.open(explained) as b:
        assert b.height > 2 * a.height and b.width > 3 * 100  # prediction + rows of 3 word tiles


def test_table_output_without_out(cli, ckpt, image):
    res = cli("predict", ckpt, image, "the red cube")
    assert res.exit_code == 0 and "the red cube" in res.stdout


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda p: p.write_text("not an image"), "not an image file"),
        (lambda p: None, "not found"),
    ],
)
def test_unreadable_image_exits_2_and_keeps_output(cli, ckpt, tmp_path, make_bad, message):
    bad = tmp_path / "bad.png"
    make_bad(bad)
    out = tmp_path / "pred.png"
    out.write_bytes(b"previous result")
    res = cli("predict", ckpt, bad, "the red cube", "--out", out)
    assert res.exit_code == 2
    assert message in res.stderr and str(bad) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"previous result"


def test_unwritable_output_exits_2(cli, ckpt, image, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    res = cli("predict", ckpt, image, "the red cube", "--out", blocker / "pred.png")
    assert res.exit_code == 2 and "file.txt" in res.stderr
    assert blocker.read_text() == "x"
    res = cli("predict", ckpt, image, "the red cube", "--out", tmp_path / "pred.unknownext")
    assert res.exit_code == 2 and "picture format" in res.stderr


def test_bad_checkpoint_and_empty_expression_exit_2(cli, ckpt, image, tmp_path):
    res = cli("predict", tmp_path / "missing", image, "the cube")
    assert res.exit_code == 2 and "missing" in res.stderr
    res = cli("predict", ckpt, image, "  ")
    assert res.exit_code == 2 and "empty" in res.stderr


# ---------------------------------------------------------------------------------------------- issue 14


@pytest.fixture(scope="module")
def task_ckpts(tmp_path_factory) -> dict[str, Path]:
    from test_inference_grounder import make_checkpoint as make_task_checkpoint  # VQA needs answers

    root = tmp_path_factory.mktemp("tasks")
    return {t: make_task_checkpoint(root / t, f"synth-laconvnet-t-{t}") for t in ("vqa", "gref")}


def one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1, res.stderr  # one line (besides the synthetic-checkpoint note)
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_vqa_results_name_their_questions(cli, task_ckpts, image, tmp_path, monkeypatch):
    questions = ["is there a big metal sphere", "the red cube"]
    res = cli("predict", task_ckpts["vqa"], image, *questions, "--json", "--top-k", "2")
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)["results"]
    assert [r["expression"] for r in results] == questions
    assert all(len(r["answers"]) == 2 and r["answer"] == r["answers"][0]["answer"] for r in results)
    table = cli("predict", task_ckpts["vqa"], image, *questions)
    assert table.exit_code == 0 and all(q in table.stdout for q in questions)
    # the picture's caption: "question -> answer (score)" per question
    from langground.inference import visualize

    captions: list[str] = []
    real = visualize.with_caption
    monkeypatch.setattr(
        visualize, "with_caption", lambda t, text, s: captions.append(text) or real(t, text, s)
    )
    assert cli("predict", task_ckpts["vqa"], image, *questions, "--out", tmp_path / "q.png").exit_code == 0
    parts = captions[0].split(" | ")
    assert [p.split(" -> ")[0] for p in parts] == questions
    assert all(p.split(" -> ")[1].split(" (")[0] == r["answer"] for p, r in zip(parts, results, strict=True))


def test_bad_device_is_a_one_line_error(cli, ckpt, image, monkeypatch):
    one_line_error(
        cli("predict", ckpt, image, "the red cube", "--device", "tpu"), "--device='tpu': not a device"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(cli("predict", ckpt, image, "the cube", "--device", "cuda"), "CUDA is not available")


def test_huge_images(cli, ckpt, tmp_path, monkeypatch):
    from test_inference_images import write_blank_png

    huge = tmp_path / "huge.png"
    write_blank_png(huge, 20000, 20000)
    one_line_error(cli("predict", ckpt, huge, "the red cube"), str(huge), "400,000,000 pixels", "limit")
    # above PIL's warning limit (lowered here so that the image is small): one line of our own
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    big = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((70, 120, 3), np.uint8)).save(big)  # 8400 pixels
    res = cli("predict", ckpt, big, "the red cube", "--json")
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "large image (120x70 = 8,400 pixels" in res.stderr
    assert "DecompressionBombWarning" not in res.output


def test_out_never_overwrites_the_input(cli, ckpt, image, tmp_path):
    before = image.read_bytes()
    one_line_error(cli("predict", ckpt, image, "the red cube", "--out", image), "is an input file")
    spelled = image.parent / "sub" / ".." / image.name
    (image.parent / "sub").mkdir()
    one_line_error(cli("predict", ckpt, image, "the red cube", "--out", spelled), "is an input file")
    link = tmp_path / "link.jpg"
    link.symlink_to(image)
    one_line_error(cli("predict", ckpt, link, "the red cube", "--out", image), "is an input file")
    one_line_error(
        cli("predict", ckpt, image, "the red cube", "--results", image), "--results would overwrite"
    )
    assert image.read_bytes() == before


def test_unknown_words_and_synthetic_checkpoint_are_said(cli, ckpt, image):
    res = cli("predict", ckpt, image, "the zorglub flibber", "--json")
    assert res.exit_code == 0, res.output
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "2 of 3 words (67%)" in warning[0] and "'zorglub', 'flibber'" in warning[0]
    assert "trained on the synthetic world only" in res.stderr
    assert json.loads(res.stdout)["results"][0]["unknown_words"] == ["zorglub", "flibber"]


def test_gref_thresholds_and_decision(cli, task_ckpts, image):
    gref = task_ckpts["gref"]
    res = cli(
        "predict", gref, image, "the red cube", "--json", "--box-threshold", "0", "--no-target-threshold", "1"
    )
    assert res.exit_code == 0, res.output
    (r,) = json.loads(res.stdout)["results"]
    assert r["has_target"] is True and r["boxes"] and all(b["score"] >= 0 for b in r["boxes"])
    res = cli("predict", gref, image, "the red cube", "--json", "--no-target-threshold", "0")
    (r,) = json.loads(res.stdout)["results"]
    assert r["has_target"] is False and r["boxes"] == []
    assert cli("predict", gref, image, "the red cube", "--no-target-threshold", "0").exit_code == 0
    res = cli(
        "predict", gref, image, "the red cube", "--json", "--box-threshold", "1", "--no-target-threshold", "1"
    )
    (kept_none,) = json.loads(res.stdout)["results"]
    assert kept_none["has_target"] is True and kept_none["boxes"] == []
    # the table states the decision (rendered wide: the CLI's console wraps at the terminal's width)
    import io

    from rich.console import Console

    from langground.cli.predict import _table

    wide = Console(file=io.StringIO(), width=200)
    wide.print(_table([r, kept_none], ["said none", "kept none"], vqa=False, box_threshold=1.0))
    text = wide.file.getvalue()
    said_none_row = next(line for line in text.splitlines() if "said none" in line)
    kept_none_row = next(line for line in text.splitlines() if "kept none" in line)
    assert "(no target)" in said_none_row and "none above" not in said_none_row
    assert "(target)" in kept_none_row and "- (none above 1.00)" in kept_none_row
    one_line_error(cli("predict", gref, image, "the cube", "--box-threshold", "2"), "expected a probability")
    one_line_error(
        cli("predict", task_ckpts["vqa"], image, "the cube", "--box-threshold", "0.5"), "applies to"
    )


def test_long_expression_is_printed_as_read(cli, ckpt, image):
    res = cli("predict", ckpt, image, " ".join(["red"] * 5000))
    assert res.exit_code == 0, res.output
    assert "red red red" in res.stdout and "…" in res.stdout
    assert res.stdout.count("red") < 100 and len(res.stdout.splitlines()) < 15  # not 5000 words
    assert len([line for line in res.stderr.splitlines() if line.startswith("warning:")]) == 1


def test_explain_picture_has_colour_bar(cli, ckpt, image, tmp_path):
    from langground.inference.visualize import _RAMP

    out = tmp_path / "explained.png"
    assert cli("predict", ckpt, image, "the red cube", "--out", out, "--explain").exit_code == 0
    arr = np.asarray(Image.open(out).convert("RGB")).astype(int)
    top = np.all(np.abs(arr - _RAMP[-1]) <= 3, axis=-1)  # the bar's top colour, a row of pixels wide
    assert (top.sum(axis=1) >= 8).any()
