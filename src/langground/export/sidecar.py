"""The metadata sidecar of an exported graph: ``model.onnx`` -> ``model.json``, written atomically.

It holds what a runtime needs besides the graph: the vocabulary (tokenisation; for a Hugging Face
text encoder also the saved tokenizer's folder and max length), the input size and
text length, the task and its thresholds, the answers (VQA), the graph's input / output names, the
sha256 of the checkpoint's weights, the opset and the parity figures measured at export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langground._files import chmod_default
from langground.errors import CheckpointError

__all__ = ["FORMAT", "OnnxMetadata", "file_sha256", "read_sidecar", "sidecar_path", "write_sidecar"]

FORMAT = "langground-onnx/1"
#: ``kind`` of a graph: the whole static model, or one expression's extracted LADS subnet
KINDS = ("static", "subnet")


@dataclass
class OnnxMetadata:
    model_name: str
    task: str
    input_size: int
    max_text_length: int
    vocab: list[str]
    inputs: list[str]
    outputs: list[str]
    opset: int
    checkpoint_sha256: str
    answers: list[str] | None = None
    postprocess: dict[str, Any] = field(default_factory=dict)
    trained_on: str | None = None
    kind: str = "static"
    exporter: str = "torch.onnx.export (TorchScript tracer)"
    fixed_text_length: int | None = None  # the graph takes exactly this many words (the runtime pads)
    expression: str | None = None  # subnet graphs: the expression they answer
    gate_pattern: str | None = None  # subnet graphs: sha1 of the hard gate pattern
    # Hugging Face text encoders: the tokenizer folder beside the graph (its inputs are that tokenizer's
    # input_ids / attention_mask / word_index) and its max_length; None: word ids of ``vocab``
    text_tokenizer: str | None = None
    text_max_length: int | None = None
    parity: dict[str, float] = field(default_factory=dict)  # output -> max abs diff at export
    parity_relative: dict[str, float] = field(default_factory=dict)  # max |diff| / max(1, |torch|)
    langground_version: str = ""
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.json`` (same folder, same stem)."""
    return Path(onnx_path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(meta: OnnxMetadata, path: str | os.PathLike) -> Path:
    """Write ``meta`` as JSON at ``path`` (temp file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta.to_dict(), f, indent=1, ensure_ascii=False)
        chmod_default(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_sidecar(path: str | os.PathLike) -> OnnxMetadata:
    """Read a sidecar; a missing, unreadable or foreign file is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: metadata sidecar missing (langground export writes it beside the .onnx)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON sidecar ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a langground ONNX sidecar (format {got!r}, expected {FORMAT!r})")
    names = {f.name for f in dataclasses.fields(OnnxMetadata)}
    try:
        meta = OnnxMetadata(**{k: v for k, v in data.items() if k in names})
    except TypeError as e:
        raise CheckpointError(f"{path}: incomplete sidecar ({e})") from None
    if meta.kind not in KINDS:
        raise CheckpointError(f"{path}: unknown graph kind {meta.kind!r}; expected one of {', '.join(KINDS)}")
    return meta
