"""The ``onnx`` backend of the Grounder: an exported graph (``langground export``) behind the model contract.

:class:`OnnxModel` wraps an onnxruntime session as the callable the Grounder runs:
``model(images (N,3,S,S), TextBatch) -> {output name: tensor}``, tokenised with the vocabulary saved in
the sidecar (or, for a Hugging Face text encoder, with the tokenizer saved beside the graph). It is an ``nn.Module`` without parameters so ``.to(device).eval()`` work as for PyTorch
models; outputs come back as tensors on the images' device. Explanations (attention maps) are not in the
graph: the Grounder refuses ``explain`` on this backend with a one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from langground.errors import CheckpointError, LanggroundError
from langground.export.parity import make_session, pad_text
from langground.export.sidecar import OnnxMetadata, read_sidecar, sidecar_path
from langground.types import TextBatch

__all__ = ["OnnxModel", "load_onnx_model", "resolve_onnx"]


def resolve_onnx(path: str | os.PathLike) -> Path:
    """An ``.onnx`` file, or a directory holding exactly one exported graph (with its sidecar)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such .onnx file or directory")
    if p.is_file():
        return p
    found = sorted(f for f in p.glob("*.onnx") if sidecar_path(f).is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(
            f"{p}: no exported graph here (expected a .onnx with its .json sidecar: run langground export)"
        )
    names = ", ".join(f.name for f in found)
    raise CheckpointError(f"{p}: {len(found)} exported graphs here ({names}): name the .onnx file to load")


class OnnxModel(nn.Module):
    """An onnxruntime session with the model contract's forward (static graphs only)."""

    def __init__(
        self, path: str | os.PathLike, meta: OnnxMetadata, threads: int | None = None, device: Any = "cpu"
    ):
        super().__init__()
        self.path = Path(path)
        self.meta = meta
        self.session = make_session(self.path, threads, str(device))
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != list(meta.inputs):
            raise CheckpointError(
                f"{self.path}: graph inputs {graph_inputs} do not match its sidecar's {list(meta.inputs)}"
            )
        self.output_names = list(meta.outputs)
        self.input_size = int(meta.input_size)
        self.max_text_length = int(meta.max_text_length)
        self.task = meta.task
        self.tokenizer = None if meta.text_tokenizer is None else _load_tokenizer(self.path, meta)

    def forward(self, images: Tensor, text: TextBatch, phrases: Any = None) -> dict[str, Any]:
        if phrases is not None:
            raise LanggroundError(
                "the onnx backend takes no phrase queries (the graph has images and text only)"
            )
        if tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            raise LanggroundError(
                f"images are {tuple(images.shape[-2:])}, the exported graph takes {self.input_size}x{self.input_size}"
            )
        images = text.images_per_text(images)
        if self.tokenizer is not None:  # a Hugging Face text encoder: its sub-words, as it tokenises
            from langground.models.text_encoders import hf_tokenize

            ids, mask, word_index = hf_tokenize(self.tokenizer, text, int(self.meta.text_max_length or 512))
            words = {
                "token_ids": text.token_ids.detach().cpu().long(),
                "attention_mask": text.attention_mask.cpu(),
            }
            feed = {**words, "subword_ids": ids, "subword_mask": mask, "word_index": word_index}
            return self._run(images, {k: v.numpy() for k, v in feed.items()})
        ids, mask = text.token_ids.detach().cpu().long(), text.attention_mask.detach().cpu().bool()
        if self.meta.fixed_text_length is not None:  # a graph traced at one length (see export.onnx)
            if ids.shape[1] > self.meta.fixed_text_length:
                raise LanggroundError(
                    f"{ids.shape[1]} words, more than the graph's fixed text length {self.meta.fixed_text_length}"
                )
            ids, mask = pad_text(ids, mask, self.meta.fixed_text_length)
        return self._run(images, {"token_ids": ids.numpy(), "attention_mask": mask.numpy()})

    def _run(self, images: Tensor, text_feed: dict[str, Any]) -> dict[str, Any]:
        feed = {"images": images.detach().float().cpu().contiguous().numpy(), **text_feed}
        feed = {k: v for k, v in feed.items() if k in self.meta.inputs}  # inputs the tracer kept
        got = self.session.run(self.output_names, feed)
        return {k: torch.from_numpy(v).to(images.device) for k, v in zip(self.output_names, got, strict=True)}

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, model={self.meta.model_name!r}, task={self.task!r}"


def _load_tokenizer(onnx_path: Path, meta: OnnxMetadata) -> Any:
    """The Hugging Face tokenizer saved beside the graph at export (offline: local files only)."""
    folder = onnx_path.parent / str(meta.text_tokenizer)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: tokenizer folder missing (langground export saves it beside {onnx_path.name})"
        )
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except ImportError:
        raise CheckpointError(
            f"{onnx_path}: the graph reads a Hugging Face tokenizer: pip install 'langground[text]'"
        ) from None
    except (OSError, ValueError, TypeError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise CheckpointError(f"{folder}: cannot load the saved tokenizer ({first[:160]})") from None


def load_onnx_model(path: str | os.PathLike, device: Any = "cpu", threads: int | None = None) -> OnnxModel:
    """The graph at ``path`` (file or directory) with its sidecar, ready for the Grounder.

    Raises:
        CheckpointError: missing file or sidecar, a graph onnxruntime cannot load, or a per-expression
            subnet (LADS), which answers only the expression it was extracted for.
    """
    onnx_path = resolve_onnx(path)
    meta = read_sidecar(sidecar_path(onnx_path))
    if meta.kind != "static":
        raise CheckpointError(
            f"{onnx_path}: a {meta.model_name} subnet extracted for one expression ({meta.expression!r}): "
            "it takes images only; run it with onnxruntime directly, or use the checkpoint with backend='torch'"
        )
    try:
        return OnnxModel(onnx_path, meta, threads=threads, device=device)
    except LanggroundError as e:
        raise CheckpointError(str(e)) from None
