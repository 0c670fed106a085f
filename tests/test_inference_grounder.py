"""Grounder: fresh tiny checkpoints (64 px) -> HF-pipeline-shaped results in ORIGINAL image pixels."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import langground
from langground.errors import CheckpointError, LanggroundError
from langground.inference.grounder import Grounder
from langground.inference.images import TruncationWarning, UnknownWordsWarning

TEXTS = ["the red cube left of the blue ball", "small green cylinder", "is there a big metal sphere"]
ANSWERS = ["yes", "no", "2", "red"]


def make_checkpoint(
    path: Path, preset: str = "synth-laconvnet-t-rec", size: int = 64, max_words: int = 6
) -> Path:
    """A freshly initialised tiny model written with the engine's checkpoint writer."""
    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint
    from langground.text.vocab import Vocabulary

    cfg = load_preset(preset, [f"transforms.input_size={size}", f"data.max_text_length={max_words}"])
    vocab = Vocabulary.build(TEXTS)
    answers = ANSWERS if cfg.model.task == "vqa" else None
    torch.manual_seed(0)
    model = build_model(cfg, vocab, answers)
    return save_checkpoint(path, model=model, config=cfg, vocab=vocab, answers=answers)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {t: make_checkpoint(root / t, f"synth-laconvnet-t-{t}") for t in ("rec", "res", "gref", "vqa")}


@pytest.fixture(scope="module")
def rec(ckpts) -> Grounder:
    return Grounder.from_pretrained(ckpts["rec"])


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    # 90 x 150 (H x W): letterboxed with vertical padding on a 64 canvas
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)


def test_lazy_export():
    assert langground.Grounder is Grounder


def test_single_expression_result_shape(rec, photo):
    r = rec.predict(photo, "the red cube")
    assert set(r) == {
        "box",
        "score",
        "mask",
        "no_target",
        "has_target",
        "expression",
        "boxes",
        "unknown_words",
    }
    assert r["has_target"] is None and r["unknown_words"] == []  # a REC model has no no-target head
    assert r["boxes"] == [{"box": r["box"], "score": r["score"]}]  # REC: the one box, also as a list
    box = r["box"]
    assert set(box) == {"xmin", "ymin", "xmax", "ymax"}
    assert 0 <= box["xmin"] <= box["xmax"] <= 150 and 0 <= box["ymin"] <= box["ymax"] <= 90
    assert 0.0 <= r["score"] <= 1.0 and r["mask"] is None and r["no_target"] is None
    assert r["expression"] == "the red cube"


def test_box_is_the_models_box_unletterboxed(rec, photo):
    """The result equals the model's own canvas box mapped back by hand: orig = (canvas - pad) / scale."""
    from langground.data.transforms import preprocess_image

    canvas, (scale, pad_x, pad_y) = preprocess_image(Image.fromarray(photo), 64)
    text = rec.vocab.batch(["the red cube"], rec.max_text_length)
    with torch.no_grad():
        cx, cy, w, h = (rec.model(canvas[None], text)["pred_boxes"][0] * 64).tolist()
    expect = np.clip(
        [
            (cx - w / 2 - pad_x) / scale,
            (cy - h / 2 - pad_y) / scale,
            (cx + w / 2 - pad_x) / scale,
            (cy + h / 2 - pad_y) / scale,
        ],
        0,
        [150, 90, 150, 90],
    )
    box = rec.predict(photo, "the red cube")["box"]
    np.testing.assert_allclose([box["xmin"], box["ymin"], box["xmax"], box["ymax"]], expect, atol=0.01)
    assert scale == pytest.approx(64 / 150) and pad_x == 0 and pad_y > 0


def test_batched_equals_one_by_one(rec, photo):
    many = rec.predict(photo, ["the red cube", "a small green cylinder"])
    assert isinstance(many, list) and len(many) == 2
    for r, text in zip(many, ["the red cube", "a small green cylinder"], strict=True):
        one = rec.predict(photo, text)
        for k in ("xmin", "ymin", "xmax", "ymax"):
            assert r["box"][k] == pytest.approx(one["box"][k], abs=0.05)
        assert r["score"] == pytest.approx(one["score"], abs=1e-4)


def test_inputs_path_pil_numpy_and_many_images(rec, photo, tmp_path):
    Image.fromarray(photo).save(tmp_path / "p.png")
    by_path = rec.predict(tmp_path / "p.png", "the red cube")
    by_pil = rec.predict(Image.fromarray(photo), "the red cube")
    assert by_path["box"] == by_pil["box"]
    other = np.zeros((40, 30, 3), np.uint8)
    out = rec.predict([photo, other], ["the red cube", ["a ball", "the cube"]])
    assert isinstance(out[0], dict) and isinstance(out[1], list) and len(out[1]) == 2
    assert out[0]["box"] == by_pil["box"]
    assert all(b["box"]["xmax"] <= 30 and b["box"]["ymax"] <= 40 for b in out[1])
    with pytest.raises(LanggroundError, match="2 images but 1"):
        rec.predict([photo, other], ["the cube"])


def test_text_edge_cases(rec, photo):
    with pytest.raises(LanggroundError, match="empty"):
        rec.predict(photo, "   ")
    with pytest.raises(LanggroundError, match="no expressions"):
        rec.predict(photo, [])
    # unknown words are <unk>, not an error (but a warning: test_unknown_words_warn_with_their_share)
    with pytest.warns(UnknownWordsWarning):
        r = rec.predict(photo, "zebra xylophone quokka")
    assert r["box"] is not None
    # longer than the model's 6 words: truncated with one warning, same result as the first 6 words
    long = "the red cube left of the blue ball near the wall"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r_long = rec.predict(photo, [long, long])
    assert [w.category for w in caught] == [TruncationWarning]
    assert r_long[0]["box"] == rec.predict(photo, "the red cube left of the")["box"]


def test_explain_gives_per_word_maps_in_original_pixels(rec, photo):
    r = rec.predict(photo, "the red cube", explain=True)
    assert r["words"] == ["the", "red", "cube"]
    assert r["attention"], "the model exposes no attention"
    for maps in r["attention"].values():
        assert maps.shape == (3, 90, 150) and np.isfinite(maps).all()


def test_res_model_mask(ckpts, photo):
    g = Grounder.from_pretrained(ckpts["res"])
    r = g.predict(photo, "the red cube")
    assert isinstance(r["mask"], Image.Image) and r["mask"].mode == "L" and r["mask"].size == (150, 90)
    assert set(np.unique(np.asarray(r["mask"]))) <= {0, 255}


def test_gref_model_box_set_and_no_target(ckpts, photo):
    g = Grounder.from_pretrained(ckpts["gref"])
    r = g.predict(photo, "the red cube")
    assert 0.0 <= r["no_target"] <= 1.0 and isinstance(r["boxes"], list)
    scores = [b["score"] for b in r["boxes"]]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.7 for s in scores)
    assert (r["box"] is None) == (not r["boxes"])


def test_vqa_model_top_k(ckpts, photo):
    g = Grounder.from_pretrained(ckpts["vqa"])
    r = g.predict(photo, "is there a big metal sphere", top_k=3)
    assert set(r) == {"expression", "answer", "score", "answers", "unknown_words"}
    answers = r["answers"]
    assert len(answers) == 3 and (r["answer"], r["score"]) == (answers[0]["answer"], answers[0]["score"])
    assert {a["answer"] for a in answers} <= set(ANSWERS)
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-5


def test_bad_checkpoint_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        Grounder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as info:
        Grounder.from_pretrained(tmp_path / "empty")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- issue 14


def test_vqa_results_carry_their_question(ckpts, photo):
    """Several questions: each result says which question it answers (it used to be a bare answer list)."""
    g = Grounder.from_pretrained(ckpts["vqa"])
    questions = ["is there a big metal sphere", "the red cube"]
    results = g.predict(photo, questions, top_k=2)
    assert [r["expression"] for r in results] == questions
    assert all(len(r["answers"]) == 2 and r["answer"] in ANSWERS for r in results)
    explained = g.predict(photo, questions[0], explain=True)
    assert explained["expression"] == questions[0] and explained["words"] == questions[0].split()


def test_unknown_words_warn_with_their_share(ckpts, photo):
    g = Grounder.from_pretrained(ckpts["rec"])
    assert g.synthetic_only  # synth-* presets train on the synthetic world
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = g.predict(photo, ["the zorglub cube", "flibber zorglub"])
    assert [w.category for w in caught] == [UnknownWordsWarning]  # one warning per call
    message = str(caught[0].message)
    assert "3 of 5 words (60%)" in message and "'zorglub', 'flibber'" in message
    assert "synthetic world only" in message and "\n" not in message
    assert [x["unknown_words"] for x in r] == [["zorglub"], ["flibber", "zorglub"]]
    # all words known: no warning; a model not trained on the synthetic world does not claim it was
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert g.predict(photo, "the red cube")["unknown_words"] == []
    real = Grounder(g.model, g.vocab, input_size=64, max_text_length=6, task="rec", trained_on="refcoco")
    with pytest.warns(UnknownWordsWarning) as record:
        real.predict(photo, "the zorglub")
    assert "synthetic" not in str(record[0].message) and "1 of 2 words (50%)" in str(record[0].message)


def test_thresholds_are_predict_options(ckpts, photo):
    g = Grounder.from_pretrained(ckpts["gref"])
    assert (g.postprocess_config.box_set_threshold, g.postprocess_config.no_target_threshold) == (0.7, 0.5)
    keep_all = g.predict(photo, "the red cube", box_threshold=0.0, no_target_threshold=1.0)
    assert keep_all["has_target"] is True and keep_all["boxes"], "threshold 0 keeps every (NMS-kept) box"
    assert keep_all["box"] == keep_all["boxes"][0]["box"]
    never = g.predict(photo, "the red cube", no_target_threshold=0.0)
    assert never["has_target"] is False and never["boxes"] == [] and never["box"] is None
    assert never["no_target"] == pytest.approx(keep_all["no_target"])  # the probability; the decision moves
    default = g.predict(photo, "the red cube")
    assert default["has_target"] == (default["no_target"] < 0.5)
    assert g.postprocess_config.box_set_threshold == 0.7  # per call: the checkpoint's config is untouched
    with pytest.raises(LanggroundError, match=r"box threshold 1.5: expected a probability in \[0, 1\]"):
        g.predict(photo, "the red cube", box_threshold=1.5)
    rec = Grounder.from_pretrained(ckpts["rec"])
    with pytest.raises(LanggroundError, match="applies to models that predict a set of boxes.*'rec'"):
        rec.predict(photo, "the red cube", box_threshold=0.5)
    with pytest.raises(LanggroundError, match="no-target threshold 0.5: applies to"):
        rec.predict(photo, "the red cube", no_target_threshold=0.5)


def test_bad_device_is_one_line(ckpts, monkeypatch):
    with pytest.raises(LanggroundError, match="device='tpu': not a device"):
        Grounder.from_pretrained(ckpts["rec"], device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LanggroundError, match="device='cuda': CUDA is not available on this machine"):
        Grounder.from_pretrained(ckpts["rec"], device="cuda")
    assert Grounder.from_pretrained(ckpts["rec"], device="auto").device == torch.device("cpu")


def test_read_form_is_what_the_model_read(rec):
    assert rec.read_form("The red cube!") == "The red cube!"  # short: untouched
    assert rec.read_form(" ".join(["red"] * 5000)) == "red red red red red red …"  # 6 words + ellipsis
