"""Finding, sizing and decoding dataset images, with one-line DataErrors naming the file and record."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from langground.errors import DataError


def pick_image_dir(candidates: Sequence[Path], probe: Iterable[str], max_probe: int = 5) -> Path:
    """The first candidate directory holding one of the first ``max_probe`` probe files.

    Falls back to the first existing candidate, then to the first candidate: a dataset opens
    even when its images are not there yet (``data check`` reports them missing).
    """
    names = []
    for name in probe:
        names.append(name)
        if len(names) >= max_probe:
            break
    for d in candidates:
        if any((d / n).is_file() for n in names):
            return d
    for d in candidates:
        if d.is_dir():
            return d
    return candidates[0]


_SIZES: dict[str, tuple[int, int]] = {}


def _one_line(e: BaseException) -> str:
    # PIL puts the file name into some messages; ours already starts with it.
    return " ".join(str(e).split()) or type(e).__name__


def _header_size(path: str) -> tuple[int, int] | str:
    # Successful reads are cached (an index asks once per record); failures are not, so a file
    # that appears later is found.
    if path in _SIZES:
        return _SIZES[path]
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        return "image not found"
    except (UnidentifiedImageError, OSError) as e:
        return f"cannot read image header: {_one_line(e)}; expected a JPEG/PNG image"
    if len(_SIZES) > 200_000:
        _SIZES.clear()
    _SIZES[path] = (int(h), int(w))
    return _SIZES[path]


def image_size(path: str | Path, record: str = "") -> tuple[int, int]:
    """``(height, width)`` of an image from its header (no pixel decode), cached per path."""
    size = _header_size(str(path))
    if isinstance(size, str):
        where = f" (record {record})" if record else ""
        raise DataError(f"{path}: {size}{where}")
    return size


def load_image(path: str | Path, record: str = "") -> Image.Image:
    """Decode an image to RGB; a missing or undecodable file is a DataError naming it and the record."""
    where = f" (record {record})" if record else ""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image not found{where}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = _one_line(e).replace(f" '{path}'", "").replace(str(path), "the file")  # named once
        raise DataError(
            f"{path}: image fails to decode{where}: {reason}; expected a JPEG/PNG image"
        ) from None


def verify_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> str | None:
    """Decode an image cheaply (JPEG draft mode) and return what is wrong with it, or None."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            # Draft mode decodes JPEGs at 1/8 scale: still catches truncated and corrupt files.
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except FileNotFoundError:
        return "image not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"image fails to decode: {_one_line(e)}; expected a JPEG/PNG image"
    if expected_size and expected_size != (0, 0) and tuple(expected_size) != (h, w):
        return f"image is {h}x{w} (HxW) but the annotations say {expected_size[0]}x{expected_size[1]}"
    return None
