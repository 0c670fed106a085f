"""Where ``langground predict`` writes: output checks made before any model work, atomic writes, and
never over an input (same file, whatever the spelling or link)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from langground._files import chmod_default
from langground.errors import LanggroundError


def check_output_path(out: Path) -> str:
    """Fail early (before any model work) on an output the picture could not be written to.

    Returns the PIL format name of the output's extension.
    """
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise LanggroundError(
            f"{out}: unknown picture format {out.suffix or '(no extension)'!r}: use .png or .jpg"
        )
    if out.is_dir():
        raise LanggroundError(f"{out}: is a directory, expected a picture file name")
    _writable_folder(out.parent, "output directory")
    return fmt


def _writable_folder(folder: Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise LanggroundError(f"{folder}: is a file, expected an {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LanggroundError(f"{folder}: cannot create the {what} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LanggroundError(f"{folder}: {what} is not writable")


def _file_ids(paths: Sequence[Path]) -> set[tuple[int, int]]:
    """(device, inode) of each existing path: the identity ``os.path.samefile`` compares."""
    ids = set()
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _is_one_of(path: Path, ids: set[tuple[int, int]]) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False  # does not exist (yet): it cannot be an input
    return (st.st_dev, st.st_ino) in ids


def refuse_overwriting(path: Path, inputs: set[tuple[int, int]], option: str) -> None:
    """A one-line error when ``path`` is one of the inputs (same file, whatever the spelling or link)."""
    if _is_one_of(path, inputs):
        raise LanggroundError(f"{path}: is an input file: {option} would overwrite it; choose another name")


def save_atomically(image: Image.Image, out: Path, fmt: str) -> None:
    """Write into a temp file next to ``out`` and rename: a failure never leaves a half-written picture."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=out.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
        chmod_default(tmp, directory=False)  # as open() would: the umask decides
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plan_pictures(jobs: Sequence[Any], folder: Path, inputs: set[tuple[int, int]]) -> list[Path]:
    """``FOLDER/<image stem>.png`` per job; ``-2``, ``-3``... on name clashes and never an input file."""
    taken: set[str] = set()
    paths = []
    for job in jobs:
        stem, k = job.image.stem, 1
        while True:
            name = f"{stem}.png" if k == 1 else f"{stem}-{k}.png"
            if name not in taken and not _is_one_of(folder / name, inputs):
                break
            k += 1
        taken.add(name)
        paths.append(folder / name)
    return paths
