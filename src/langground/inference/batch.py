"""Many images at once: a folder of images or a JSONL file of (image, expression) rows -> jobs, and an
atomic JSON-lines writer for their results.

A JSONL row is ``{"image": PATH, "expression": TEXT}`` (``"question"`` is accepted for ``"expression"``);
relative image paths are relative to the JSONL file's folder. Consecutive rows of the same image form one
job, so the image is decoded once. Every row is checked before any model work: a bad row is a one-line
:class:`LanggroundError` naming ``FILE:LINE``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from PIL import Image

from langground._files import chmod_default
from langground.errors import LanggroundError
from langground.text.tokenizer import tokenize

ROW = '{"image": PATH, "expression": TEXT}'
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


@dataclass
class Job:
    """One image and the expressions to ground in it.

    Attributes:
        lines: per expression, its line in the JSONL file (None: given on the command line).
        source: the JSONL file the rows came from (None for a folder or a single image).
    """

    image: Path
    expressions: list[str] = field(default_factory=list)
    lines: list[int | None] = field(default_factory=list)
    source: Path | None = None

    @property
    def where(self) -> str:
        """``FILE:LINE`` of the job's first row, or the image path: the prefix of its error messages."""
        if self.source is not None and self.lines and self.lines[0] is not None:
            return f"{self.source}:{self.lines[0]}"
        return str(self.image)


def image_suffixes() -> set[str]:
    """File extensions PIL can open (``.jpg``, ``.png``, ...), lower case."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (not recursive; hidden files skipped), sorted by name."""
    suffixes = image_suffixes()
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )
    if not files:
        raise LanggroundError(f"{folder}: no image files in this folder (expected .jpg, .png, ... files)")
    return files


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a number")


def read_jsonl(path: Path) -> list[Job]:
    """Parse and check every row of a JSONL file (image files must exist) into jobs, in row order."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LanggroundError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    jobs: list[Job] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LanggroundError(
                f"{where}: not valid JSON ({e.msg}, column {e.colno}): expected {ROW}"
            ) from None
        if not isinstance(row, dict):
            raise LanggroundError(f"{where}: {_json_type(row)}, expected an object {ROW}")
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            got = "missing" if "image" not in row else f"{_json_type(image)} {image!r}"
            raise LanggroundError(f'{where}: "image" is {got}: expected an image path, as in {ROW}')
        key = next((k for k in ("expression", "question") if k in row), None)
        if key is None:
            raise LanggroundError(f'{where}: "expression" is missing: expected {ROW}')
        expression = row[key]
        if not isinstance(expression, str):
            raise LanggroundError(f'{where}: "{key}" is {_json_type(expression)}, expected a string')
        if not tokenize(expression):
            raise LanggroundError(
                f'{where}: "{key}" {expression!r} has no words: expected a referring expression'
            )
        img = Path(image).expanduser()
        if not img.is_absolute():
            img = path.parent / img
        if not img.is_file():
            what = "is a directory" if img.is_dir() else "not found"
            raise LanggroundError(
                f"{where}: image {image!r} {what} (relative paths are relative to {path.parent or '.'})"
            )
        if jobs and jobs[-1].image == img:
            jobs[-1].expressions.append(expression)
            jobs[-1].lines.append(lineno)
        else:
            jobs.append(Job(img, [expression], [lineno], source=path))
    if not jobs:
        raise LanggroundError(f"{path}: no rows: expected one {ROW} object per line")
    return jobs


def collect_jobs(source: Path, expressions: Sequence[str]) -> tuple[str, list[Job]]:
    """``source`` (an image, a folder of images or a ``.jsonl`` file) -> ``(kind, jobs)``.

    ``kind`` is ``image``, ``folder`` or ``jsonl``. A single image is not opened here (its loader names
    the problem); a folder and a JSONL file are fully listed and checked.
    """
    expressions = list(expressions)
    if source.is_dir():
        if not expressions:
            raise LanggroundError(
                f'{source}: a folder needs expressions to ground in each image: predict CKPT {source} "the red cube"'
            )
        return "folder", [Job(p, list(expressions), [None] * len(expressions)) for p in image_files(source)]
    if source.suffix.lower() == ".jsonl":
        if not source.is_file():
            raise LanggroundError(f"{source}: JSONL file not found")
        if expressions:
            raise LanggroundError(
                f"{source}: a .jsonl input carries its own expressions (one {ROW} per line): drop the "
                f"{len(expressions)} extra argument(s)"
            )
        return "jsonl", read_jsonl(source)
    if not expressions:
        raise LanggroundError(
            f'{source}: no expressions given: expected predict CKPT IMAGE "the red cube" [...]'
        )
    return "image", [Job(source, expressions, [None] * len(expressions))]


def chunks(jobs: Sequence[Job], max_pairs: int) -> Iterator[list[Job]]:
    """Consecutive jobs with at most ``max_pairs`` (image, expression) pairs together (one job at least)."""
    chunk: list[Job] = []
    pairs = 0
    for job in jobs:
        if chunk and pairs + len(job.expressions) > max_pairs:
            yield chunk
            chunk, pairs = [], 0
        chunk.append(job)
        pairs += len(job.expressions)
    if chunk:
        yield chunk


class JsonLinesWriter:
    """One JSON object per line, to stdout as they come or to ``path`` atomically: lines go to a temp file
    next to it, renamed over ``path`` only when the ``with`` block ends without an error, so a failed or
    interrupted run never leaves a partial results file (nor replaces an old one)."""

    def __init__(self, path: Path | None, stream: TextIO | None = None):
        self.path = path
        self.stream = stream
        self.count = 0
        self._tmp: str | None = None
        self._file: TextIO | None = None

    def __enter__(self) -> JsonLinesWriter:
        if self.path is not None:
            fd, self._tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}-", suffix=".tmp"
            )
            self._file = os.fdopen(fd, "w", encoding="utf-8")
        return self

    def write(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False)
        if self._file is not None:
            self._file.write(line + "\n")
        else:
            out = self.stream or sys.stdout
            out.write(line + "\n")
            out.flush()
        self.count += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is None or self._tmp is None or self.path is None:
            return
        self._file.close()
        if exc_type is None:
            chmod_default(self._tmp, directory=False)  # as open() would: the umask decides
            os.replace(self._tmp, self.path)
        else:
            Path(self._tmp).unlink(missing_ok=True)
