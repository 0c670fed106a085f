"""``langground predict`` on a real COCO photo with a synthetic-world checkpoint: the output means nothing,
but nothing may crash and every coordinate must be in the photo's own pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from langground.cli import _mount, app

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/real-refcoco-sample"
PHOTOS = sorted((SAMPLE / "images/train2014").glob("*.jpg")) if SAMPLE.is_dir() else []

pytestmark = pytest.mark.skipif(not PHOTOS, reason=f"real RefCOCO sample not found at {SAMPLE}")


def make_checkpoint(path: Path, preset: str) -> Path:
    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint
    from langground.text.vocab import Vocabulary

    cfg = load_preset(preset, ["transforms.input_size=96"])
    vocab = Vocabulary.build(["the red cube left of the blue ball", "small green cylinder"])
    torch.manual_seed(0)
    return save_checkpoint(path, model=build_model(cfg, vocab), config=cfg, vocab=vocab)


@pytest.mark.parametrize("task", ["rec", "res"])
def test_predict_on_a_coco_photo(tmp_path, task):
    ckpt = make_checkpoint(tmp_path / task, f"synth-laconvnet-t-{task}")
    photo = PHOTOS[0]
    with Image.open(photo) as im:
        width, height = im.size
    out = tmp_path / "photo_pred.png"
    _mount()
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(ckpt),
            str(photo),
            "man in the red shirt on the left",
            "the umbrella",
            "--out",
            str(out),
            "--json",
            "--explain",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["width"], data["height"]) == (width, height)
    for r in data["results"]:
        b = r["box"]
        if task == "res":
            assert r["mask"]["size"] == [height, width]
            if r["mask"]["area"] == 0:  # an untrained RES model may predict nothing: then no box either
                assert b is None
                continue
        assert 0 <= b["xmin"] <= b["xmax"] <= width and 0 <= b["ymin"] <= b["ymax"] <= height
    with Image.open(out) as pic:
        assert pic.width >= width  # the full-resolution photo is the top of the picture
        top = np.asarray(pic.convert("RGB"))[: height // 4]
        assert top.std() > 5  # the photo, not a blank canvas
