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
    with Image.open(out) as pic:
        assert pic.size == (120, 70)
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
