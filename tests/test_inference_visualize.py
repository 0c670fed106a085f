"""Pictures: labels keep off the predicted objects, no-target labels state the decision, explanation rows
carry a colour bar and their value range, truncated expressions are shown as the model read them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from langground.inference import visualize as V


def result(box=None, score=None, no_target=None, has_target=None, mask=None) -> dict:
    boxes = [] if box is None else [{"box": box, "score": score}]
    return {
        "box": box,
        "score": score,
        "boxes": boxes,
        "mask": mask,
        "no_target": no_target,
        "has_target": has_target,
    }


def box(x0, y0, x1, y1) -> dict:
    return {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}


def test_labels_state_the_no_target_decision():
    said_none = V.prediction_label(result(no_target=0.87, has_target=False), "the dog", 0.7)
    assert said_none == "the dog  no target (p=0.87)"
    none_passed = V.prediction_label(result(no_target=0.13, has_target=True), "the dog", 0.7)
    assert none_passed == "the dog  target (p(no target)=0.13), 0 boxes above 0.70"
    found = V.prediction_label(result(box(1, 2, 3, 4), 0.91, no_target=0.13, has_target=True), "the dog")
    assert found == "the dog  0.91"
    assert V.prediction_label(result(box(1, 2, 3, 4), 0.5), "a cube") == "a cube  0.50"


def test_small_image_labels_go_to_a_legend_not_onto_the_object():
    """On a 64 px scene an 11 px label fits neither above, below nor beside a box that fills the middle:
    it goes into a legend strip under the image, and the object's pixels stay as they were."""
    img = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    out = V.draw_predictions(img, [result(box(10, 10, 54, 54), 0.9)], ["the red cube left of the ball"])
    assert out.width == 64 and out.height > 64  # the legend strip
    inner = np.asarray(out)[14:50, 14:50]  # inside the box, past its outline
    assert (inner == 128).all(), "a label was drawn on the predicted object"
    legend = np.asarray(out)[64:]
    assert (legend == V.PALETTE[0]).all(axis=-1).any(), "the legend entry has the box's colour"


def test_large_image_label_sits_next_to_the_box():
    img = Image.fromarray(np.full((300, 400, 3), 128, np.uint8))
    results = [result(box(100, 100, 200, 200), 0.9), result(box(120, 110, 210, 190), 0.8)]
    out = V.draw_predictions(img, results, ["the red cube", "the ball"])
    assert out.size == (400, 300)  # room on the image: no legend
    arr = np.asarray(out)
    width = V.line_width(img.size)
    for b in results:  # nothing inside either box but the boxes' outlines
        x0, y0, x1, y1 = (int(v) for v in V._box_of(b))
        inside = arr[y0 + width : y1 - width, x0 + width : x1 - width]
        outline_colours = {tuple(c) for c in V.PALETTE[:2]} | {(128, 128, 128)}
        assert {tuple(c) for c in inside.reshape(-1, 3)} <= outline_colours
    assert (arr[:100] != 128).any(), "the labels were drawn above the boxes"


def test_colour_bar_runs_from_vmax_at_the_top_to_vmin_at_the_bottom():
    bar = np.asarray(V.colour_bar(120, 0.0, 0.37, 11))
    assert bar.shape[0] == 120
    np.testing.assert_allclose(bar[0, 0], V._RAMP[-1], atol=3)
    np.testing.assert_allclose(bar[-1, 0], V._RAMP[0], atol=3)


def test_explanation_rows_carry_range_and_colour_bar(monkeypatch):
    captions: list[str] = []
    real_caption = V._caption
    monkeypatch.setattr(V, "_caption", lambda text, w, s: captions.append(text) or real_caption(text, w, s))
    img = Image.fromarray(np.zeros((50, 100, 3), np.uint8))
    maps = np.random.default_rng(0).random((3, 50, 100)).astype(np.float32) * 0.4
    words = ["red"] * 3
    out = V.draw_explanation(img, None, " ".join(["red"] * 5000), words, {"stage4": maps}, tile_width=100)
    assert f"stage4: 0 to {maps.max():.3g}" in captions
    assert captions[0] == 'attention per word: "red red red …"'  # what the model read, not 5000 words
    label_w = max(60, 100 // 3)
    bare = 6 + label_w + 3 * (100 + 6) + 6  # gap + label + three tiles + gaps, without the bar
    assert out.width >= bare + 20
    row = np.asarray(out)
    ramp_top = np.all(np.abs(row.astype(int) - V._RAMP[-1].astype(int)) <= 3, axis=-1)
    assert ramp_top[:, bare - 6 :].any(), "no colour bar right of the tiles"


@pytest.mark.parametrize("size", [(64, 64), (640, 480)])
def test_no_target_label_avoids_objects(size):
    img = Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8))
    results = [result(box(0, 0, size[0] * 0.6, size[1] * 0.6), 0.9), result(no_target=0.9, has_target=False)]
    out = V.draw_predictions(img, results, ["the cube", "the dog"])
    arr = np.asarray(out)
    w = V.line_width(img.size)
    x1, y1 = int(size[0] * 0.6), int(size[1] * 0.6)
    inside = arr[w : y1 - w, w : x1 - w]
    assert (inside == 128).all()
