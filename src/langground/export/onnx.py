"""``langground export CKPT --format onnx``: a checkpoint's model as an ONNX graph + sidecar, checked.

Exporter: the TorchScript tracer (``torch.onnx.export(..., dynamo=False)``). On torch 2.14 the dynamo
exporter specialises the text length at the RNN text encoders (``aten.gru`` / ``aten.lstm`` trace
with a per-step decomposition), needs ``onnxscript`` and took 29 s instead of 2 s for LaConvNet-T; the
tracer exports the RNNs as ONNX GRU / LSTM ops with a dynamic length, and :mod:`.rewrite` fixes its one
shape-baking spot (``nn.MultiheadAttention``). Dynamic axes: batch and text length; the image side is
the checkpoint's input size (the Grounder letterboxes every image to it).

Every graph is written to a temporary file beside ``out``, checked against PyTorch (:mod:`.parity`)
and only then renamed into place with its sidecar: a graph that fails parity never lands.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import langground
from langground.errors import LanggroundError
from langground.export.graph import INPUTS, TensorGraph
from langground.export.parity import (
    DEFAULT_TOLERANCE,
    ParityError,
    ParityReport,
    check_parity,
    pad_text,
    parity_inputs,
)
from langground.export.rewrite import exportable
from langground.export.sidecar import OnnxMetadata, file_sha256, sidecar_path, write_sidecar

__all__ = ["DEFAULT_OPSET", "ExportError", "ExportResult", "export_checkpoint", "export_graph"]

DEFAULT_OPSET = 17
FORMATS = ("onnx",)


class ExportError(LanggroundError):
    """The model cannot be exported (one line saying why)."""


@dataclass
class ExportResult:
    paths: list[Path]
    reports: list[ParityReport]
    approach: str  # what was exported, in words
    metadata: list[OnnxMetadata] = field(default_factory=list)


def check_exportable(model: nn.Module) -> None:
    """Refuse models whose forward cannot become a graph, naming the reason."""
    from langground.models.text_encoders import MiniLMTextEncoder

    name = type(model).__name__
    if hasattr(model, "extract_subnet") and any(isinstance(m, MiniLMTextEncoder) for m in model.modules()):
        raise ExportError(
            f"{name} cannot be exported to ONNX: a gated model with a Hugging Face text encoder is not "
            "supported (static models with one are; train the gated one with text_encoder=lstm to export)"
        )
    if not hasattr(model, "forward_unchecked"):
        raise ExportError(f"{name} does not follow the model contract (no forward_unchecked)")


def writable_target(out: str | os.PathLike) -> Path:
    """``out`` as a Path whose folder exists and is writable; a one-line error otherwise."""
    out = Path(out)
    if out.is_dir():
        raise LanggroundError(f"{out}: is a directory: expected the path of the .onnx file to write")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise LanggroundError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LanggroundError(f"{out}: folder {parent} is not writable")
    return out


def export_graph(
    graph: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """Trace ``graph`` on ``example`` into ``path`` (TorchScript exporter, see the module docstring)."""
    graph.eval()
    with exportable(graph), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's deprecation and "converting a tensor" notes
        try:
            torch.onnx.export(
                graph,
                example,
                str(path),
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
        except LanggroundError:
            raise
        except Exception as e:  # noqa: BLE001 - the tracer's errors are long; keep the first line
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ExportError(
                f"{type(graph).__name__} could not be traced to ONNX (opset {opset}): {type(e).__name__}: {first}"
            ) from None


def _tmp_beside(out: Path) -> Path:
    fd, tmp = tempfile.mkstemp(
        dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}-", suffix=".tmp"
    )
    os.close(fd)
    return Path(tmp)


def land(tmp: Path, out: Path, meta: OnnxMetadata) -> None:
    """Move a checked graph into place and write its sidecar (both atomically)."""
    from langground._files import chmod_default

    chmod_default(tmp, directory=False)
    os.replace(tmp, out)
    write_sidecar(meta, sidecar_path(out))


def base_metadata(ckpt: Any, output_names: list[str], opset: int) -> OnnxMetadata:
    cfg = ckpt.config
    return OnnxMetadata(
        model_name=cfg.model.name,
        task=cfg.model.task,
        input_size=int(cfg.transforms.input_size),
        max_text_length=int(cfg.data.max_text_length),
        vocab=list(ckpt.vocab.words),
        inputs=list(INPUTS),
        outputs=list(output_names),
        opset=int(opset),
        checkpoint_sha256=file_sha256(ckpt.path / "model.safetensors"),
        answers=ckpt.answers,
        postprocess=asdict(cfg.postprocess),
        trained_on=cfg.data.dataset,
        langground_version=langground.__version__,
    )


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str = "onnx",
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    expressions: list[str] | None = None,
    threads: int | None = None,
) -> ExportResult:
    """Export a checkpoint (or run directory) to ``out``; gated models need ``expressions``.

    Raises:
        LanggroundError: unknown format, unwritable path, a model that cannot export (why),
            a parity failure (:class:`~langground.export.parity.ParityError`).
    """
    from langground.engine.checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise LanggroundError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = writable_target(out)
    ckpt = load_checkpoint(ckpt_path, device="cpu")
    model = ckpt.model.eval()
    check_exportable(model)
    if hasattr(model, "extract_subnet"):
        from langground.export.gated import export_subnets

        return export_subnets(ckpt, out, expressions, opset=opset, tolerance=tolerance, threads=threads)
    if expressions:
        raise LanggroundError(
            f"--expressions is for gated models (LADS); {ckpt.config.model.name} is static: drop it"
        )
    from langground.export.hf_text import export_hf_static, hf_encoders

    if hf_encoders(model):  # MiniLM / BERT: the graph takes the saved tokenizer's sub-word ids
        return export_hf_static(ckpt, out, opset=opset, tolerance=tolerance, threads=threads)
    cases = parity_inputs(model.input_size, model.max_text_length, model.vocab_size)
    graph = TensorGraph(model)
    names = graph.discover(*cases[1])
    tmp = _tmp_beside(out)
    try:
        fixed: int | None = None
        try:
            report = _export_static(graph, cases, tmp, names, opset, tolerance, threads, None)
        except ParityError as dynamic_error:
            # e.g. a recurrence unrolled by a Python loop over the words (DMN's SRU): the graph only
            # works at the traced length; export at max_text_length and let the runtime pad. A graph
            # wrong at the traced shape itself is wrong, whatever the length: no retry.
            check_parity(tmp, graph, cases[1:2], names, list(INPUTS), tolerance, threads)
            fixed = int(model.max_text_length)
            try:
                report = _export_static(graph, cases, tmp, names, opset, tolerance, threads, fixed)
            except ParityError:
                raise dynamic_error from None
        meta = base_metadata(ckpt, names, opset)
        meta.parity, meta.fixed_text_length = dict(report.max_abs_diff), fixed
        meta.parity_relative = dict(report.max_scaled_diff)
        land(tmp, out, meta)
    finally:
        tmp.unlink(missing_ok=True)
    length = (
        "dynamic batch and length"
        if fixed is None
        else (
            f"dynamic batch; text length fixed at {fixed} (the length-generic graph failed parity: the model "
            "unrolls a loop over the words; the runtime pads to it)"
        )
    )
    approach = f"static graph: inputs {', '.join(INPUTS)} ({length}) -> {', '.join(names)}"
    return ExportResult([out], [report], approach, [meta])


def _export_static(
    graph: TensorGraph,
    cases: list[tuple[torch.Tensor, ...]],
    tmp: Path,
    names: list[str],
    opset: int,
    tolerance: float,
    threads: int | None,
    fixed: int | None,
) -> ParityReport:
    """Trace at the second case's shapes (batch 2; padded to ``fixed`` words when set), then check."""
    example = cases[1]
    axes: dict[str, dict[int, str]] = {"images": {0: "batch"}, "token_ids": {0: "batch"}}
    if fixed is None:
        axes["token_ids"][1] = "length"
    else:
        example = (example[0], *pad_text(example[1], example[2], fixed))
    axes["attention_mask"] = dict(axes["token_ids"])
    batch = int(example[0].shape[0])
    axes.update({k: {0: "batch"} for k, shape in graph.example_shapes.items() if shape[:1] == (batch,)})
    export_graph(graph, example, tmp, list(INPUTS), names, axes, opset)
    return check_parity(tmp, graph, cases, names, list(INPUTS), tolerance, threads, pad_to=fixed)
