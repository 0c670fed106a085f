"""langground.ops.boxes: formats, frames (normalized / canvas / original), IoU and GIoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.ops as tvops

from langground.ops import boxes as B


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 0.5
    return torch.cat((xy, xy + wh), dim=1)


# ----------------------------------------------------------------------------- formats


def test_cxcywh_xyxy_hand_values_and_round_trip():
    cxcywh = torch.tensor([[10.0, 20.0, 4.0, 6.0]])
    xyxy = B.box_cxcywh_to_xyxy(cxcywh)
    assert xyxy.tolist() == [[8.0, 17.0, 12.0, 23.0]]
    assert torch.equal(B.box_xyxy_to_cxcywh(xyxy), cxcywh)
    boxes = _random_boxes(20, 0)
    assert torch.allclose(B.box_cxcywh_to_xyxy(B.box_xyxy_to_cxcywh(boxes)), boxes, atol=1e-12)


def test_xywh_xyxy_coco_no_plus_one():
    xywh = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    xyxy = B.box_xywh_to_xyxy(xywh)
    assert isinstance(xyxy, np.ndarray) and xyxy.dtype == np.float32
    assert xyxy.tolist() == [[1.0, 2.0, 4.0, 6.0]]
    np.testing.assert_array_equal(B.box_xyxy_to_xywh(xyxy), xywh)


def test_numpy_in_numpy_out_and_int_promotion():
    out = B.box_xywh_to_xyxy(np.array([[0, 0, 3, 3]], np.int64))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    out64 = B.box_cxcywh_to_xyxy(np.zeros((2, 3, 4)))  # any leading shape, float64 kept
    assert out64.shape == (2, 3, 4) and out64.dtype == np.float64
    assert isinstance(B.box_cxcywh_to_xyxy(torch.zeros(1, 4)), torch.Tensor)


@pytest.mark.parametrize("shape", [(4, 3), (5,), ()])
def test_bad_shapes_raise_value_error(shape):
    with pytest.raises(ValueError, match=r"expected shape"):
        B.box_cxcywh_to_xyxy(torch.zeros(shape))


def test_pairwise_ops_need_2d():
    with pytest.raises(ValueError, match=r"boxes1: expected shape \(N, 4\)"):
        B.box_iou(torch.zeros(2, 3, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="equal shapes"):
        B.box_iou_aligned(torch.zeros(2, 4), torch.zeros(3, 4))


# ----------------------------------------------------------------------------- frames


def test_normalize_denormalize():
    size = (100, 200)  # (H, W)
    boxes = torch.tensor([[20.0, 10.0, 100.0, 50.0]])
    norm = B.normalize_boxes(boxes, size)
    assert torch.allclose(norm, torch.tensor([[0.1, 0.1, 0.5, 0.5]]))
    assert torch.allclose(B.denormalize_boxes(norm, size), boxes)
    with pytest.raises(ValueError, match=r"\(height, width\)"):
        B.normalize_boxes(boxes, (0, 10))


def test_letterbox_forward_and_inverse():
    # A 200x100 (W x H) image letterboxed into 320x320: scale 1.6, content 320x160, pad_y = 80.
    transform = (1.6, 0.0, 80.0)
    orig = torch.tensor([[50.0, 25.0, 150.0, 75.0]], dtype=torch.float64)
    canvas = B.original_to_canvas(orig, transform)
    assert torch.allclose(canvas, torch.tensor([[80.0, 120.0, 240.0, 200.0]], dtype=torch.float64))
    assert torch.allclose(B.canvas_to_original(canvas, transform), orig)
    # orig = (canvas - pad) / scale, with both pads used.
    back = B.canvas_to_original(torch.tensor([[13.0, 17.0, 33.0, 57.0]]), (2.0, 3.0, 7.0))
    assert back.tolist() == [[5.0, 5.0, 15.0, 25.0]]


def test_letterbox_batched_transforms_broadcast():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [10.0, 10.0, 20.0, 20.0]])
    transforms = torch.tensor([[1.0, 0.0, 0.0], [2.0, 4.0, 6.0]])
    out = B.canvas_to_original(boxes, transforms)
    assert out.tolist() == [[10.0, 10.0, 20.0, 20.0], [3.0, 2.0, 8.0, 7.0]]
    with pytest.raises(ValueError, match="scale must be > 0"):
        B.canvas_to_original(boxes, (0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(scale, pad_x, pad_y\)"):
        B.canvas_to_original(boxes, (1.0, 1.0))


def test_decode_encode_round_trip_and_clip():
    canvas_size, transform, image_size = (320, 320), (1.6, 0.0, 80.0), (100, 200)
    orig = np.array([[50.0, 25.0, 150.0, 75.0], [0.0, 0.0, 200.0, 100.0]])
    enc = B.encode_boxes(orig, canvas_size, transform)
    # Box 0's centre (100, 50) in original pixels is the canvas centre (160, 160) -> 0.5, 0.5.
    np.testing.assert_allclose(enc[0], [0.5, 0.5, 160 / 320, 80 / 320])
    np.testing.assert_allclose(B.decode_boxes(enc, canvas_size, transform, image_size), orig, atol=1e-9)
    # A prediction spilling into the padding is clipped to the image.
    spill = np.array([[0.5, 0.5, 1.2, 1.2]])
    np.testing.assert_allclose(B.decode_boxes(spill, canvas_size, transform, image_size), [[0, 0, 200, 100]])


def test_clip_and_enclosing_box():
    clipped = B.clip_boxes(torch.tensor([[-5.0, -1.0, 250.0, 50.0]]), (100, 200))
    assert clipped.tolist() == [[0.0, 0.0, 200.0, 50.0]]
    enc = B.enclosing_box(np.array([[1.0, 5.0, 3.0, 6.0], [2.0, 0.0, 4.0, 2.0]]))
    assert enc.tolist() == [1.0, 0.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="at least one box"):
        B.enclosing_box(np.zeros((0, 4)))


# ----------------------------------------------------------------------------- overlap


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 0.0, 6.0, 1.0]])
    iou = B.box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    giou = B.generalized_box_iou(a, b)
    # Enclosing boxes: 3x3 = 9 and 6x2 = 12 -> GIoU = IoU - (|C| - |A ∪ B|) / |C|.
    assert torch.allclose(giou, torch.tensor([[1 / 7 - 2 / 9, 1.0, 0.0 - (12 - 5) / 12]]))
    assert torch.allclose(B.box_iou_aligned(a.expand(3, 4), b), iou[0])
    assert torch.allclose(B.generalized_box_iou_aligned(a.expand(3, 4), b), giou[0])


def test_no_plus_one_convention():
    # 10x10 vs 10x5 -> exactly 0.5; the "+1" convention would give 66/121.
    iou = B.box_iou(np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([[0.0, 0.0, 10.0, 5.0]]))
    assert iou[0, 0] == 0.5
    assert B.box_area(np.array([[0.0, 0.0, 10.0, 5.0]])).tolist() == [50.0]


def test_matches_torchvision_on_valid_boxes():
    a, b = _random_boxes(7, 1), _random_boxes(9, 2)
    assert torch.allclose(B.box_iou(a, b), tvops.box_iou(a, b))
    assert torch.allclose(B.generalized_box_iou(a, b), tvops.generalized_box_iou(a, b))


def test_degenerate_boxes_never_nan():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    line = torch.tensor([[0.0, 0.0, 0.0, 4.0]])
    inverted = torch.tensor([[4.0, 4.0, 2.0, 2.0]])
    for x in (point, line, inverted):
        for y in (point, line, inverted, torch.tensor([[0.0, 0.0, 4.0, 4.0]])):
            assert torch.isfinite(B.box_iou(x, y)).all() and B.box_iou(x, y).item() == 0.0
            assert torch.isfinite(B.generalized_box_iou(x, y)).all()
    assert B.box_area(inverted).item() == 0.0
    # Two distinct points: IoU 0, enclosing box has area -> GIoU -1.
    other = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert B.generalized_box_iou(point, other).item() == -1.0


def test_giou_aligned_gradients_finite_on_degenerate_boxes():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    (1 - B.generalized_box_iou_aligned(pred, target)).sum().backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().sum() > 0


def test_empty_sets():
    assert B.box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    assert B.box_cxcywh_to_xyxy(np.zeros((0, 4), np.float32)).shape == (0, 4)
