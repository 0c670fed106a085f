"""Box formats, coordinate frames and IoU/GIoU: pure tensor functions on top of ``torchvision.ops``.

Conventions (see ``langground.types``):

- Formats: ``xyxy`` = (x1, y1, x2, y2) corners, ``cxcywh`` = centre + size, ``xywh`` = COCO's
  top-left corner + size. Coordinates are continuous: a box covers ``[x1, x2) x [y1, y2)``, its area
  is ``(x2 - x1) * (y2 - y1)`` with **no +1** (the old VOC/refer "+1" convention is not used anywhere).
- Frames: *normalized* boxes are divided by the image width/height; *canvas* boxes live on the model's
  letterboxed input; *original* boxes live on the original image. The letterbox map is the tuple
  ``(scale, pad_x, pad_y)`` carried by :class:`langground.types.Batch`: ``orig = (canvas - pad) / scale``.
- Sizes are ``(height, width)``, like ``GroundingRecord.image_size`` and ``torchvision``.
- IoU never produces NaN: boxes without area (degenerate or inverted) cover no pixels, so their
  IoU with anything is 0.

Every function accepts a ``torch.Tensor`` or a ``numpy.ndarray`` (the data side works in numpy) and
returns the same kind it was given (integer arrays are promoted to float32 first). Shapes are
checked and a wrong one raises ``ValueError`` naming the argument and the shape it got.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torchvision.ops as tvops
from torch import Tensor

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_iou_aligned",
    "box_xywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "canvas_to_original",
    "clip_boxes",
    "decode_boxes",
    "denormalize_boxes",
    "enclosing_box",
    "encode_boxes",
    "generalized_box_iou",
    "generalized_box_iou_aligned",
    "LetterboxTransform",
    "normalize_boxes",
    "original_to_canvas",
]

BoxesT = TypeVar("BoxesT", Tensor, np.ndarray)
F = TypeVar("F", bound=Callable[..., Any])

#: ``(scale, pad_x, pad_y)`` with ``orig = (canvas - pad) / scale``; a tensor ``(..., 3)`` also works.
LetterboxTransform = tuple[float, float, float]


# ----------------------------------------------------------------------------- plumbing


def _to_tensor(x: Tensor | np.ndarray) -> Tensor:
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, Tensor):
        t = x
    else:
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray of boxes, got {type(x).__name__}")
    return t if t.is_floating_point() else t.to(torch.float32)


def _numpy_in_numpy_out(fn: F) -> F:
    """Let ``fn`` (written for tensors) take numpy arrays; the output follows the FIRST argument's kind."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_numpy = bool(args) and isinstance(args[0], np.ndarray)
        args = tuple(_to_tensor(a) if isinstance(a, np.ndarray | Tensor) else a for a in args)
        out = fn(*args, **kwargs)
        return out.detach().cpu().numpy() if as_numpy else out

    return wrapper  # type: ignore[return-value]


def _check_boxes(boxes: Tensor, name: str = "boxes", ndim: int | None = None) -> None:
    if boxes.ndim == 0 or boxes.shape[-1] != 4 or (ndim is not None and boxes.ndim != ndim):
        want = "(N, 4)" if ndim == 2 else "(..., 4)"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(boxes.shape)}")


def _check_size(size: Sequence[float], name: str = "size") -> tuple[float, float]:
    if len(size) != 2 or not all(float(s) > 0 for s in size):
        raise ValueError(f"{name}: expected (height, width) with positive entries, got {tuple(size)}")
    return float(size[0]), float(size[1])


def _affine(transform: LetterboxTransform | Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(scale, pad_x, pad_y)`` as tensors broadcastable against ``like[..., 0::2]``."""
    t = torch.as_tensor(transform, dtype=like.dtype, device=like.device)
    if t.ndim == 0 or t.shape[-1] != 3:
        raise ValueError(f"transform: expected (scale, pad_x, pad_y), got shape {tuple(t.shape)}")
    if not bool((t[..., 0] > 0).all()):
        raise ValueError(f"transform: scale must be > 0, got {t[..., 0].tolist()}")
    return t[..., 0:1], t[..., 1:2], t[..., 2:3]


def _xy_stack(x: Tensor, y: Tensor) -> Tensor:
    """Re-interleave ``x = [x1, x2]`` and ``y = [y1, y2]`` into ``[x1, y1, x2, y2]``."""
    return torch.stack((x, y), dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- formats


@_numpy_in_numpy_out
def box_cxcywh_to_xyxy(boxes: BoxesT) -> BoxesT:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``, any leading shape ``(..., 4)``."""
    _check_boxes(boxes)
    return tvops.box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


@_numpy_in_numpy_out
def box_xyxy_to_cxcywh(boxes: BoxesT) -> BoxesT:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``, any leading shape ``(..., 4)``."""
    _check_boxes(boxes)
    return tvops.box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


@_numpy_in_numpy_out
def box_xywh_to_xyxy(boxes: BoxesT) -> BoxesT:
    """COCO ``(x, y, w, h)`` -> ``(x1, y1, x2, y2)`` (``x2 = x + w``, no +1)."""
    _check_boxes(boxes)
    return tvops.box_convert(boxes, in_fmt="xywh", out_fmt="xyxy")


@_numpy_in_numpy_out
def box_xyxy_to_xywh(boxes: BoxesT) -> BoxesT:
    """``(x1, y1, x2, y2)`` -> COCO ``(x, y, w, h)`` (``w = x2 - x1``, no +1)."""
    _check_boxes(boxes)
    return tvops.box_convert(boxes, in_fmt="xyxy", out_fmt="xywh")


# ----------------------------------------------------------------------------- frames


@_numpy_in_numpy_out
def normalize_boxes(boxes: BoxesT, size: Sequence[float]) -> BoxesT:
    """Absolute pixels -> ``[0, 1]``: x divided by the width, y by the height of ``size = (H, W)``.

    Works for ``xyxy`` and ``cxcywh`` alike (both are x, y, x-like, y-like).
    """
    _check_boxes(boxes)
    h, w = _check_size(size)
    return boxes / boxes.new_tensor([w, h, w, h])


@_numpy_in_numpy_out
def denormalize_boxes(boxes: BoxesT, size: Sequence[float]) -> BoxesT:
    """``[0, 1]`` -> absolute pixels of an image of ``size = (H, W)``; inverse of :func:`normalize_boxes`."""
    _check_boxes(boxes)
    h, w = _check_size(size)
    return boxes * boxes.new_tensor([w, h, w, h])


@_numpy_in_numpy_out
def canvas_to_original(boxes: BoxesT, transform: LetterboxTransform | Tensor) -> BoxesT:
    """Absolute ``xyxy`` on the letterboxed canvas -> ``xyxy`` on the original image.

    ``orig = (canvas - pad) / scale`` with ``transform = (scale, pad_x, pad_y)``. A tensor transform
    of shape ``(..., 3)`` broadcasts against the boxes' leading dims (e.g. boxes ``(B, 4)`` with
    transforms ``(B, 3)``, or boxes ``(B, K, 4)`` with ``(B, 1, 3)``).
    """
    _check_boxes(boxes)
    scale, pad_x, pad_y = _affine(transform, boxes)
    return _xy_stack((boxes[..., 0::2] - pad_x) / scale, (boxes[..., 1::2] - pad_y) / scale)


@_numpy_in_numpy_out
def original_to_canvas(boxes: BoxesT, transform: LetterboxTransform | Tensor) -> BoxesT:
    """``xyxy`` on the original image -> absolute ``xyxy`` on the canvas: ``canvas = orig * scale + pad``."""
    _check_boxes(boxes)
    scale, pad_x, pad_y = _affine(transform, boxes)
    return _xy_stack(boxes[..., 0::2] * scale + pad_x, boxes[..., 1::2] * scale + pad_y)


@_numpy_in_numpy_out
def clip_boxes(boxes: BoxesT, size: Sequence[float]) -> BoxesT:
    """Clamp ``xyxy`` boxes into an image of ``size = (H, W)``: x to ``[0, W]``, y to ``[0, H]``."""
    _check_boxes(boxes)
    h, w = _check_size(size)
    return tvops.clip_boxes_to_image(boxes, (h, w))  # type: ignore[arg-type]


@_numpy_in_numpy_out
def decode_boxes(
    boxes: BoxesT,
    canvas_size: Sequence[float],
    transform: LetterboxTransform | Tensor,
    image_size: Sequence[float] | None = None,
) -> BoxesT:
    """Model output -> result: normalized ``cxcywh`` on the canvas -> ``xyxy`` pixels of the original.

    Args:
        boxes: ``(..., 4)`` normalized cxcywh (the model contract's ``pred_boxes``).
        canvas_size: ``(H, W)`` of the model input.
        transform: the sample's letterbox ``(scale, pad_x, pad_y)``.
        image_size: ``(H, W)`` of the original image; when given, boxes are clipped to it.
    """
    _check_boxes(boxes)
    out = canvas_to_original(denormalize_boxes(box_cxcywh_to_xyxy(boxes), canvas_size), transform)
    return out if image_size is None else clip_boxes(out, image_size)


@_numpy_in_numpy_out
def encode_boxes(
    boxes: BoxesT, canvas_size: Sequence[float], transform: LetterboxTransform | Tensor
) -> BoxesT:
    """Inverse of :func:`decode_boxes` (without clipping): original ``xyxy`` -> normalized canvas ``cxcywh``."""
    _check_boxes(boxes)
    return box_xyxy_to_cxcywh(normalize_boxes(original_to_canvas(boxes, transform), canvas_size))


@_numpy_in_numpy_out
def enclosing_box(boxes: BoxesT) -> BoxesT:
    """The smallest ``xyxy`` box ``(4,)`` containing all ``(K, 4)`` boxes, ``K >= 1``.

    Used where a protocol merges several referents into one box (Flickr30k Entities, LaConvNet §5.1).
    """
    _check_boxes(boxes, ndim=2)
    if boxes.shape[0] == 0:
        raise ValueError("boxes: expected at least one box to enclose, got shape (0, 4)")
    return torch.cat((boxes[:, :2].amin(dim=0), boxes[:, 2:].amax(dim=0)))


# ----------------------------------------------------------------------------- overlap


def _clamped(boxes: Tensor) -> Tensor:
    """Boxes with ``x2 >= x1`` and ``y2 >= y1`` (an inverted side collapses onto its first corner)."""
    return torch.cat((boxes[..., :2], torch.maximum(boxes[..., 2:], boxes[..., :2])), dim=-1)


def _area(boxes: Tensor) -> Tensor:
    # torchvision's box_area is 2-D only and gives w*h < 0 for inverted boxes: those cover nothing.
    return (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(dim=-1)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # den == 0 only when num == 0 here (no area, no overlap): 0/tiny = 0, never NaN, finite gradients.
    return num / den.clamp(min=torch.finfo(den.dtype).tiny)


@_numpy_in_numpy_out
def box_area(boxes: BoxesT) -> BoxesT:
    """Area ``(x2 - x1) * (y2 - y1)`` of ``(..., 4)`` xyxy boxes; inverted boxes have area 0."""
    _check_boxes(boxes)
    return _area(boxes)


def _inter_union(b1: Tensor, b2: Tensor, pairwise: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and smallest-enclosing-box areas, pairwise ``(N, M)`` or aligned ``(N,)``."""
    b1, b2 = _clamped(b1), _clamped(b2)
    if pairwise:
        b1 = b1[:, None, :]
    lo1, hi1, lo2, hi2 = b1[..., :2], b1[..., 2:], b2[..., :2], b2[..., 2:]
    inter = _area(torch.cat((torch.maximum(lo1, lo2), torch.minimum(hi1, hi2)), dim=-1))
    union = _area(b1) + _area(b2) - inter
    # Smallest enclosing box C, for GIoU (Rezatofighi et al., CVPR 2019, Alg. 1).
    enc = _area(torch.cat((torch.minimum(lo1, lo2), torch.maximum(hi1, hi2)), dim=-1))
    return inter, union, enc


@_numpy_in_numpy_out
def box_iou(boxes1: BoxesT, boxes2: BoxesT) -> BoxesT:
    """Pairwise IoU ``(N, M)`` of ``(N, 4)`` and ``(M, 4)`` xyxy boxes; 0 wherever the union is empty.

    Equals ``torchvision.ops.box_iou`` for boxes with area; degenerate boxes give 0 instead of NaN.
    """
    _check_boxes(boxes1, "boxes1", ndim=2)
    _check_boxes(boxes2, "boxes2", ndim=2)
    inter, union, _ = _inter_union(boxes1, boxes2, pairwise=True)
    return _safe_div(inter, union)


@_numpy_in_numpy_out
def box_iou_aligned(boxes1: BoxesT, boxes2: BoxesT) -> BoxesT:
    """Element-wise IoU ``(N,)`` of matched pairs ``(N, 4)``/``(N, 4)``; 0 where the union is empty."""
    _check_boxes(boxes1, "boxes1", ndim=2)
    _check_boxes(boxes2, "boxes2", ndim=2)
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"boxes1/boxes2: expected equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    inter, union, _ = _inter_union(boxes1, boxes2, pairwise=False)
    return _safe_div(inter, union)


@_numpy_in_numpy_out
def generalized_box_iou(boxes1: BoxesT, boxes2: BoxesT) -> BoxesT:
    """Pairwise GIoU ``(N, M)`` in ``[-1, 1]``: ``IoU - |C \\ (A ∪ B)| / |C|`` (Rezatofighi et al. 2019, Eq. 1).

    Equals ``torchvision.ops.generalized_box_iou`` for boxes with area, but never NaN and no assert on
    inverted boxes (they count as empty), so it is safe on raw model outputs.
    """
    _check_boxes(boxes1, "boxes1", ndim=2)
    _check_boxes(boxes2, "boxes2", ndim=2)
    inter, union, enc = _inter_union(boxes1, boxes2, pairwise=True)
    return _safe_div(inter, union) - _safe_div(enc - union, enc)


@_numpy_in_numpy_out
def generalized_box_iou_aligned(boxes1: BoxesT, boxes2: BoxesT) -> BoxesT:
    """Element-wise GIoU ``(N,)`` of matched pairs (what a GIoU loss needs: ``1 - giou``)."""
    _check_boxes(boxes1, "boxes1", ndim=2)
    _check_boxes(boxes2, "boxes2", ndim=2)
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"boxes1/boxes2: expected equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    inter, union, enc = _inter_union(boxes1, boxes2, pairwise=False)
    return _safe_div(inter, union) - _safe_div(enc - union, enc)
