"""Any image a user hands over -> an upright 8-bit RGB PIL image; expressions -> checked strings.

Images: paths, PIL images, numpy arrays (HxW, HxWxC or CxHxW; uint8, uint16, bool or float in [0, 1])
and uint8/float torch tensors. RGBA and LA are composited on white (transparent pixels would otherwise
turn black, i.e. into objects); palette images keep their transparency that way too; 16-bit images are
scaled (65535 -> 255) instead of being clipped, which is what PIL's own ``convert("L")`` does; EXIF
orientation is applied, so boxes are in the pixels a viewer shows.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from langground.errors import LanggroundError
from langground.text.tokenizer import tokenize

ImageInput = str | os.PathLike | Image.Image | np.ndarray | Any  # Any: torch.Tensor, imported lazily

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class TruncationWarning(UserWarning):
    """An expression had more words than the model reads; the rest were dropped."""


class LargeImageWarning(UserWarning):
    """An image file above PIL's decompression-bomb warning limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""


class UnknownWordsWarning(UserWarning):
    """Words outside the model's vocabulary: the model reads them as ``<unk>``, whatever they mean."""


def _bomb_error(path: Path, error: Exception) -> LanggroundError:
    found = re.search(r"\((\d+) pixels\)", str(error))
    count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return LanggroundError(
        f"{path}: image has {count}, more than the limit of {limit:,} (2 x PIL.Image.MAX_IMAGE_PIXELS, "
        "PIL's guard against decompression bombs): downscale it first (the model reads it at its own input "
        "size anyway), or raise PIL.Image.MAX_IMAGE_PIXELS in Python if you trust the file"
    )


def _warn_if_large(path: Path, img: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    pixels = img.width * img.height
    if limit is not None and pixels > limit:
        warnings.warn(
            f"{path}: large image ({img.width}x{img.height} = {pixels:,} pixels, above PIL's "
            f"decompression-bomb warning limit of {limit:,}): decoding it takes ~{3 * pixels / 2**20:,.0f} MiB "
            "and the model reads it at its own input size, so a downscaled copy gives the same result",
            LargeImageWarning,
            stacklevel=4,  # _warn_if_large <- read_image <- load_image <- the caller
        )


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as upright RGB; a :class:`LanggroundError` naming the path if it is not one.

    PIL's decompression-bomb guard keeps its limits (``PIL.Image.MAX_IMAGE_PIXELS`` warns, twice that
    refuses) but speaks our language: a one-line :class:`LargeImageWarning`, or a one-line error naming the
    pixel count and the limit, instead of PIL's own warning / exception.
    """
    path = Path(path)
    if not path.exists():
        raise LanggroundError(f"{path}: image file not found")
    if path.is_dir():
        raise LanggroundError(f"{path}: is a directory, expected an image file")
    try:
        with warnings.catch_warnings():
            # Our own warning below replaces PIL's (raised in open, and again by some plugins' load).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                large = img.width * img.height > (Image.MAX_IMAGE_PIXELS or float("inf"))
                img.load()
                rgb = to_rgb(img)
    except Image.DecompressionBombError as e:
        raise _bomb_error(path, e) from None
    except UnidentifiedImageError:
        raise LanggroundError(f"{path}: not an image file (PIL cannot identify its format)") from None
    except PermissionError:
        raise LanggroundError(f"{path}: permission denied, cannot read the image") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt files
        raise LanggroundError(f"{path}: cannot decode the image ({e})") from None
    if large:
        _warn_if_large(path, img)
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright (EXIF orientation applied) 8-bit RGB copy of any PIL image mode."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), sixteen_bit=mode in _SIXTEEN_BIT_MODES)).convert(
            "RGB"
        )
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_uint8(arr: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """Scale an integer/float/bool array to uint8 the way its dtype implies."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32))
        # Floats in [0, 1] are intensities (torchvision/skimage convention); otherwise 0..255 values.
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        wide = arr.astype(np.int64)
        top = int(wide.max()) if wide.size else 0
        # 16-bit data (declared, or 32-bit "I" images holding 16-bit values as PNG decoders produce):
        # 65535 -> 255 by dividing by 257, which maps 0..65535 exactly onto 0..255.
        if sixteen_bit or arr.dtype == np.uint16 or top > 255:
            if top > 65535:
                return np.clip(np.rint(wide * (255.0 / top)), 0, 255).astype(np.uint8)
            return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.clip(wide, 0, 255).astype(np.uint8)
    raise LanggroundError(f"image array of dtype {arr.dtype}: expected uint8, uint16, bool or float")


def array_to_image(arr: np.ndarray) -> Image.Image:
    """``HxW``, ``HxWxC`` or ``CxHxW`` (C in 1, 3, 4) array -> RGB PIL image."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] > 4:
        arr = np.moveaxis(arr, 0, -1)  # CHW (torch layout) -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or 0 in arr.shape:
        raise LanggroundError(
            f"image array of shape {arr.shape}: expected HxW, HxWx3, HxWx4 or 3xHxW with positive sizes"
        )
    arr = np.ascontiguousarray(_to_uint8(arr))
    return to_rgb(Image.fromarray(arr))  # uint8 HxW -> L, HxWx3 -> RGB, HxWx4 -> RGBA


def load_image(image: ImageInput) -> Image.Image:
    """Any supported input -> upright 8-bit RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        return array_to_image(image)
    if type(image).__module__.startswith("torch"):
        return array_to_image(image.detach().cpu().numpy())
    raise LanggroundError(
        f"image of type {type(image).__name__}: expected a path, a PIL image, a numpy array or a tensor"
    )


def check_expressions(expressions: Sequence[str], max_length: int | None, stacklevel: int = 2) -> list[str]:
    """Validate expressions before encoding: no empty ones; warn (once per call) about truncation.

    Words outside the vocabulary are not an error: the vocabulary maps them to ``<unk>``.
    """
    checked, truncated = [], []
    for i, text in enumerate(expressions):
        if not isinstance(text, str):
            raise LanggroundError(f"expression {i}: expected a string, got {type(text).__name__}")
        words = tokenize(text)
        if not words:
            what = "is empty" if not text.strip() else "has no words (only punctuation)"
            raise LanggroundError(f"expression {i} ({text!r}) {what}: expected a referring expression")
        if max_length is not None and len(words) > max_length:
            truncated.append(text)
        checked.append(text)
    if truncated:
        first = truncated[0] if len(truncated[0]) <= 60 else truncated[0][:57] + "..."
        warnings.warn(
            f"{len(truncated)} expression(s) longer than the model's maximum of {max_length} words were "
            f"truncated to their first {max_length} words (e.g. {first!r})",
            TruncationWarning,
            stacklevel=stacklevel,
        )
    return checked


def read_form(text: str, max_length: int | None) -> str:
    """What the model reads of ``text``: the text itself, or its first ``max_length`` words + an ellipsis."""
    words = tokenize(text)
    if max_length is None or len(words) <= max_length:
        return text
    return " ".join(words[:max_length]) + " …"
