"""postprocess: hand-made model outputs -> predictions in original pixels (exact coordinates)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from langground.data.transforms import Letterbox, letterbox_params
from langground.postprocess import PostprocessConfig, canvas_size_of, postprocess

# A 100x200 (H x W) image on a 64 canvas: scale 0.32, content 32 rows high, padded 16 rows top and bottom.
SIZE = (100, 200)
T = (0.32, 0.0, 16.0)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_canvas_size_is_inferred_from_the_letterbox():
    assert canvas_size_of(T, SIZE) == 64
    assert canvas_size_of((256 / 640, 0.0, 32.0), (480, 640)) == 256


def test_rec_box_is_unletterboxed_exactly():
    # canvas cxcywh (0.5, 0.5, 0.25, 0.25) * 64 -> xyxy (24, 24, 40, 40); x / 0.32, (y - 16) / 0.32.
    out = {"pred_boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25]]), "pred_scores": torch.tensor([0.8])}
    (pred,) = postprocess(out, [T], [SIZE], "rec")
    np.testing.assert_allclose(pred.boxes, [[75.0, 25.0, 125.0, 75.0]], atol=1e-4)
    np.testing.assert_allclose(pred.scores, [0.8], atol=1e-6)
    assert pred.mask is None and pred.no_target is None and pred.answer is None


def test_rec_box_is_clipped_to_the_original_image():
    # A box reaching into the bottom padding and past the right edge of the canvas.
    out = {"pred_boxes": torch.tensor([[0.9, 0.75, 0.4, 0.5]])}
    (pred,) = postprocess(out, [T], [SIZE], "rec")
    # canvas xyxy (44.8, 32, 70.4, 64) -> orig (140, 50, 220, 150) -> clipped (140, 50, 200, 100)
    np.testing.assert_allclose(pred.boxes, [[140.0, 50.0, 200.0, 100.0]], atol=1e-4)
    np.testing.assert_allclose(pred.scores, [1.0])


def test_batch_with_different_letterboxes():
    # Second image is portrait 300x150 on a 96 canvas: scale 0.32, pad_x 24.
    t2, size2 = (0.32, 24.0, 0.0), (300, 150)
    boxes = torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5]])
    preds = postprocess({"pred_boxes": boxes}, [T, t2], [SIZE, size2], "rec")
    np.testing.assert_allclose(preds[0].boxes, [[75.0, 25.0, 125.0, 75.0]], atol=1e-4)
    # canvas (24, 24, 72, 72): x (24-24)/.32 = 0 .. 150, y 75 .. 225
    np.testing.assert_allclose(preds[1].boxes, [[0.0, 75.0, 150.0, 225.0]], atol=1e-4)


def test_mask_is_cropped_of_padding_and_resized_to_the_original():
    logits = torch.full((1, 1, 64, 64), -10.0)
    logits[0, 0, 24:40, 16:48] = 10.0  # canvas rows 24..40 -> orig 25..75, cols 16..48 -> orig 50..150
    logits[0, 0, :16, :] = 10.0  # foreground in the top padding must not leak into the image
    (pred,) = postprocess({"pred_masks": logits}, [T], [SIZE], "res")
    assert pred.mask is not None and pred.mask.shape == SIZE and pred.mask.dtype == bool
    expected = np.zeros(SIZE, bool)
    expected[25:75, 50:150] = True
    # Exact edges: row 50 covers columns 50..149 and column 100 rows 25..74 (the top padding's
    # foreground blends into the first content row only, at the bilinear seam).
    np.testing.assert_array_equal(np.nonzero(pred.mask[50])[0], np.arange(50, 150))
    np.testing.assert_array_equal(np.nonzero(pred.mask[2:, 100])[0] + 2, np.arange(25, 75))
    # bilinear interpolation rounds the 4 corners of the square by one pixel, nothing else differs
    assert (pred.mask[2:] != expected[2:]).sum() <= 4
    assert pred.mask[:2].sum() <= 2 * SIZE[1]
    # no box head: the mask's bounding box, scored by its mean probability
    assert pred.boxes.shape == (1, 4)
    assert pred.boxes[0, 0] == 50 and pred.boxes[0, 2] == 150 and pred.boxes[0, 3] == 75


def test_low_resolution_mask_is_upsampled_to_the_canvas_first():
    logits = torch.full((1, 1, 16, 16), -10.0)
    logits[0, 0, 6:10, 4:12] = 10.0  # x4 on the canvas: rows 24..40, cols 16..48
    (pred,) = postprocess({"pred_masks": logits}, [T], [SIZE], "res")
    ys, xs = np.nonzero(pred.mask)
    assert abs(xs.min() - 50) <= 2 and abs(xs.max() + 1 - 150) <= 2
    assert abs(ys.min() - 25) <= 2 and abs(ys.max() + 1 - 75) <= 2


def test_mask_threshold_is_configurable():
    logits = torch.full((1, 1, 64, 64), logit(0.6))
    (loose,) = postprocess({"pred_masks": logits}, [T], [SIZE], "res")
    (strict,) = postprocess(
        {"pred_masks": logits}, [T], [SIZE], "res", config=PostprocessConfig(mask_threshold=0.7)
    )
    assert loose.mask.all() and not strict.mask.any()
    assert strict.boxes.shape == (0, 4)


def _box_set_outputs(no_target: float) -> dict[str, torch.Tensor]:
    box_set = torch.tensor(
        [
            [0.25, 0.5, 0.25, 0.25],  # A: score 0.95
            [0.26, 0.5, 0.25, 0.25],  # overlaps A (IoU > 0.5), score 0.9 -> suppressed
            [0.75, 0.5, 0.25, 0.25],  # B: score 0.8
            [0.50, 0.5, 0.10, 0.10],  # score 0.5 < 0.7 -> dropped
        ]
    )[None]
    scores = torch.tensor([[logit(0.95), logit(0.9), logit(0.8), logit(0.5)]])
    return {
        "pred_box_set": box_set,
        "pred_box_logits": scores,
        "pred_no_target": torch.tensor([logit(no_target)]),
    }


def test_generalized_rec_thresholds_and_nms():
    (pred,) = postprocess(_box_set_outputs(0.1), [T], [SIZE], "gref")
    # A: canvas (8, 24, 24, 40) -> (25, 25, 75, 75); B: canvas (40, 24, 56, 40) -> (125, 25, 175, 75)
    np.testing.assert_allclose(pred.boxes, [[25.0, 25.0, 75.0, 75.0], [125.0, 25.0, 175.0, 75.0]], atol=1e-4)
    np.testing.assert_allclose(pred.scores, [0.95, 0.8], atol=1e-6)
    assert pred.no_target == pytest.approx(0.1)


def test_generalized_rec_no_target_gives_no_boxes():
    (pred,) = postprocess(_box_set_outputs(0.9), [T], [SIZE], "gref")
    assert pred.boxes.shape == (0, 4) and pred.scores.shape == (0,)
    assert pred.no_target == pytest.approx(0.9)


def test_generalized_res_no_target_empties_the_mask():
    logits = torch.full((1, 1, 64, 64), 10.0)
    out = {"pred_masks": logits, "pred_no_target": torch.tensor([logit(0.8)])}
    (pred,) = postprocess(out, [T], [SIZE], "gres")
    assert not pred.mask.any() and pred.boxes.shape == (0, 4)


def test_vqa_answer_and_score():
    out = {"pred_answer": torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])}
    preds = postprocess(out, [T, T], [SIZE, SIZE], "vqa", answer_vocab=["yes", "no", "cube"])
    assert [p.answer for p in preds] == ["no", "yes"]
    e = np.exp([0.0, 2.0, 1.0])
    assert preds[0].answer_score == pytest.approx(e[1] / e.sum(), rel=1e-5)
    assert preds[0].boxes.shape == (0, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        postprocess({}, [T], [SIZE], "detect")
    with pytest.raises(ValueError, match="image sizes"):
        postprocess({}, [T, T], [SIZE], "rec")


@pytest.mark.parametrize("size", [(37, 91), (91, 37), (64, 64), (480, 640), (100, 300)])
def test_round_trip_with_the_data_letterbox(size):
    """A box letterboxed by the data pipeline comes back to where the math puts it.

    The resize rounds the short side to ``new = round(side * scale)`` and scales it by ``new / side``;
    postprocess divides by ``scale``. A coordinate v on the short side comes back as
    ``v * new / (side * scale)``: off by at most ``|new - side * scale| / scale`` (0.03 px for 37 x 91,
    0 for 64 x 64 and 480 x 640, 1.56 px for 100 x 300), plus float error (measured < 1e-4 px).
    """
    h, w = size
    box = torch.tensor([[0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]])
    sample = {
        "image": tv_tensors.Image(torch.zeros((3, h, w), dtype=torch.uint8)),
        "boxes": tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=(h, w)),
    }
    out = Letterbox(64)(sample)
    canvas = out["boxes"].as_subclass(torch.Tensor)
    cxcywh = torch.cat([(canvas[:, :2] + canvas[:, 2:]) / 2, canvas[:, 2:] - canvas[:, :2]], dim=1) / 64
    (pred,) = postprocess({"pred_boxes": cxcywh}, [out["letterbox"]], [size], "rec")
    scale, new_h, new_w, _, _ = letterbox_params(h, w, 64)
    exact = box * torch.tensor([new_w / (w * scale), new_h / (h * scale)] * 2)
    np.testing.assert_allclose(pred.boxes, exact.numpy(), atol=1e-3)
    bound = max(abs(new_h - h * scale), abs(new_w - w * scale)) / scale
    assert np.abs(pred.boxes - box.numpy()).max() <= bound + 1e-3
    if size != (100, 300):
        assert np.abs(pred.boxes - box.numpy()).max() < 0.1  # measured at most 0.028 px
