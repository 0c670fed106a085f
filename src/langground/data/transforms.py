"""Image + text transforms on torchvision ``tv_tensors``: boxes and masks move with the pixels.

A sample is a dict ``{"image": tv_tensors.Image, "boxes": tv_tensors.BoundingBoxes (XYXY),
"mask": tv_tensors.Mask (1, H, W), "text": str}``. Every geometric step goes through
``torchvision.transforms.v2`` on the whole dict, so image, boxes and mask can never be transformed
differently. What is new here is only what grounding needs:

- letterbox resize (keep the aspect ratio, pad to a square canvas) that records its inverse,
- a random crop that always keeps every referent whole,
- a horizontal flip that also swaps "left" and "right" in the expression,
- colour jitter without hue shift: colours are labels ("the red cube").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Padding colour: the ImageNet mean, so padded pixels are zero after normalisation.
PAD_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)

_LEFT_RIGHT = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_LEFT_RIGHT_RE = re.compile(r"\b(" + "|".join(_LEFT_RIGHT) + r")\b", re.IGNORECASE)


@dataclass
class TransformConfig:
    """Augmentation settings; evaluation always uses letterbox + normalise only."""

    input_size: int = 256
    flip_prob: float = 0.5
    crop_prob: float = 0.0
    crop_min_scale: float = 0.6
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    # TransVG's multi-scale training: the long side is a random choice of these fractions of input_size,
    # the rest of the canvas padding (centred, or at a random offset with ``translate``); () = always 1.0
    resize_scales: tuple[float, ...] = ()
    translate: bool = False
    # the crop is skipped when the text has one of these words (TransVG: left right top bottom middle)
    crop_skip_words: tuple[str, ...] = ()


def swap_left_right(text: str) -> str:
    """Mirror the spatial words of an expression, keeping their capitalisation.

    >>> swap_left_right("The cube LEFT of the leftmost ball")
    'The cube RIGHT of the rightmost ball'
    """

    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        swapped = _LEFT_RIGHT[word.lower()]
        if word.isupper():
            return swapped.upper()
        return swapped.capitalize() if word[0].isupper() else swapped

    return _LEFT_RIGHT_RE.sub(repl, text)


def swap_left_right_spans(text: str, spans: Sequence[Sequence[int]]) -> tuple[str, list[tuple[int, int]]]:
    """:func:`swap_left_right` and the character ``spans`` of ``text`` moved to the new text.

    "left" -> "right" adds a character: a phrase after it shifts by one, a phrase around it grows by one.

    >>> swap_left_right_spans("the left cube and the ball", [(0, 13), (18, 26)])
    ('the right cube and the ball', [(0, 14), (19, 27)])
    """
    shifts: list[tuple[int, int]] = []  # (end of a replaced word in the old text, length change)
    for m in _LEFT_RIGHT_RE.finditer(text):
        shifts.append((m.end(), len(_LEFT_RIGHT[m.group(0).lower()]) - len(m.group(0))))

    def moved(pos: int) -> int:
        return pos + sum(d for end, d in shifts if end <= pos)

    return swap_left_right(text), [(moved(int(a)), moved(int(b))) for a, b in spans]


def letterbox_params(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """Scale and centred padding that fit an ``height×width`` image into a ``size×size`` canvas.

    Returns ``(scale, new_h, new_w, pad_x, pad_y)``; canvas = original * scale + pad.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return scale, new_h, new_w, (size - new_w) // 2, (size - new_h) // 2


class Letterbox(v2.Transform):
    """Resize the longest side to ``size`` and pad (centred) to ``size×size``.

    Writes ``sample["letterbox"] = (scale, pad_x, pad_y)`` so predictions map back to the input:
    ``orig = (canvas - pad) / scale``.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        height, width = F.get_size(sample["image"])
        scale, new_h, new_w, pad_x, pad_y = letterbox_params(height, width, self.size)
        out = v2.Resize((new_h, new_w), antialias=True)(sample)
        padding = [pad_x, pad_y, self.size - new_w - pad_x, self.size - new_h - pad_y]
        out = v2.Pad(padding, fill={tv_tensors.Image: PAD_FILL, tv_tensors.Mask: 0, "others": 0})(out)
        # `scale` is exact on the long side; rounding the short side moves it by < 0.5 px.
        out["letterbox"] = (scale, float(pad_x), float(pad_y))
        return out


class RandomLetterbox(Letterbox):
    """TransVG's multi-scale resize: the long side becomes ``round(size * s)`` for a random ``s`` of
    ``scales``, then the image is padded to ``size×size``, centred or (``translate``) at a random offset.
    ``sample["letterbox"]`` records the inverse as :class:`Letterbox` does."""

    def __init__(self, size: int, scales: Sequence[float], translate: bool = False):
        super().__init__(size)
        self.scales, self.translate = tuple(scales) or (1.0,), translate

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        s = self.scales[int(torch.randint(len(self.scales), ()))]
        side = min(self.size, max(1, round(self.size * s)))
        height, width = F.get_size(sample["image"])
        scale, new_h, new_w, pad_x, pad_y = letterbox_params(height, width, side)
        free_x, free_y = self.size - new_w, self.size - new_h
        if self.translate:
            pad_x, pad_y = int(torch.randint(free_x + 1, ())), int(torch.randint(free_y + 1, ()))
        else:
            pad_x, pad_y = free_x // 2, free_y // 2
        out = v2.Resize((new_h, new_w), antialias=True)(sample)
        padding = [pad_x, pad_y, free_x - pad_x, free_y - pad_y]
        out = v2.Pad(padding, fill={tv_tensors.Image: PAD_FILL, tv_tensors.Mask: 0, "others": 0})(out)
        out["letterbox"] = (scale, float(pad_x), float(pad_y))
        return out


class ReferentSafeRandomCrop(v2.Transform):
    """With probability ``p``, crop a random window that contains every referent box whole.

    No-target samples are never cropped: removing objects could turn a false expression true. A sample
    holding several expressions of one image (``data.group_by_image``) carries all their boxes in
    ``boxes`` (all kept whole) and ``no_target=True`` when any of them refers to nothing.
    """

    def __init__(self, p: float = 0.5, min_scale: float = 0.6, skip_words: Sequence[str] = ()):
        super().__init__()
        self.p, self.min_scale = p, min_scale
        # whole words, any case: a crop can move the referent's place in the image ("the left one")
        words = "|".join(map(re.escape, skip_words))
        self.skip = re.compile(rf"\b({words})\b", re.IGNORECASE) if skip_words else None

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        boxes = sample["boxes"]
        if self.p <= 0 or boxes.shape[0] == 0 or sample.get("no_target", False) or torch.rand(()) >= self.p:
            return sample
        text = sample.get("text", "")
        texts = [text] if isinstance(text, str) else list(text)
        if self.skip is not None and any(self.skip.search(t) for t in texts):
            return sample
        height, width = F.get_size(sample["image"])
        x0, y0 = boxes[:, 0].min().item(), boxes[:, 1].min().item()
        x1, y1 = boxes[:, 2].max().item(), boxes[:, 3].max().item()
        crop_w = _uniform(max(x1 - x0, self.min_scale * width), width)
        crop_h = _uniform(max(y1 - y0, self.min_scale * height), height)
        left = _uniform(max(0.0, x1 - crop_w), min(x0, width - crop_w))
        top = _uniform(max(0.0, y1 - crop_h), min(y0, height - crop_h))
        left, top = math.floor(left), math.floor(top)
        crop_w = min(width - left, math.ceil(crop_w))
        crop_h = min(height - top, math.ceil(crop_h))
        return {k: F.crop(v, top, left, crop_h, crop_w) if _is_spatial(v) else v for k, v in sample.items()}


def _is_spatial(value: Any) -> bool:
    return isinstance(value, (tv_tensors.Image, tv_tensors.BoundingBoxes, tv_tensors.Mask))


def _uniform(low: float, high: float) -> float:
    if high <= low:
        return low
    return low + (high - low) * torch.rand(()).item()


class TextAwareHorizontalFlip(v2.Transform):
    """Flip image, boxes and mask together, and swap left/right words in the text.

    ``text`` is one string or a list of strings (every expression of one image: one flip for all);
    ``phrase_spans`` (optional) are the character spans of each text's phrases (a list of spans for one
    string, a list of such lists for a list), moved with the swapped words.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.p <= 0 or torch.rand(()) >= self.p:
            return sample
        out = v2.RandomHorizontalFlip(p=1.0)(sample)
        single = isinstance(out["text"], str)
        texts = [out["text"]] if single else list(out["text"])
        spans = out.get("phrase_spans")
        if spans is None:
            texts = [swap_left_right(t) for t in texts]
        else:
            moved = [
                swap_left_right_spans(t, s) for t, s in zip(texts, [spans] if single else spans, strict=True)
            ]
            texts = [t for t, _ in moved]
            out["phrase_spans"] = moved[0][1] if single else [s for _, s in moved]
        out["text"] = texts[0] if single else texts
        return out


class NormalizeImage(v2.Transform):
    """uint8 image → float, ImageNet-normalised; boxes and masks untouched."""

    def forward(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = F.to_dtype(sample["image"], torch.float32, scale=True)
        sample = dict(sample)
        sample["image"] = F.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
        return sample


def build_transforms(cfg: TransformConfig, train: bool) -> v2.Compose:
    """The training (augmenting) or evaluation pipeline for a model of ``cfg.input_size``."""
    steps: list[v2.Transform] = []
    if train:
        if cfg.crop_prob > 0:
            steps.append(ReferentSafeRandomCrop(cfg.crop_prob, cfg.crop_min_scale, cfg.crop_skip_words))
        if cfg.flip_prob > 0:
            steps.append(TextAwareHorizontalFlip(cfg.flip_prob))
    if train and (cfg.resize_scales or cfg.translate):
        steps.append(RandomLetterbox(cfg.input_size, cfg.resize_scales, cfg.translate))
    else:
        steps.append(Letterbox(cfg.input_size))
    if train and (cfg.brightness or cfg.contrast or cfg.saturation):
        # After the resize: jitter costs per pixel, and the canvas is usually far smaller than the photo.
        steps.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, hue=0.0))
    steps.append(NormalizeImage())
    return v2.Compose(steps)


def preprocess_image(image: Any, size: int) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """One PIL image (or uint8 CHW tensor) → normalised ``(3, size, size)`` canvas and its inverse map."""
    tensor = F.pil_to_tensor(image) if not isinstance(image, torch.Tensor) else image
    height, width = tensor.shape[-2:]
    sample = {
        "image": tv_tensors.Image(tensor),
        "boxes": tv_tensors.BoundingBoxes(torch.zeros((0, 4)), format="XYXY", canvas_size=(height, width)),
    }
    out = NormalizeImage()(Letterbox(size)(sample))
    return out["image"].as_subclass(torch.Tensor), out["letterbox"]
