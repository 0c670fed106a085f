"""Gated models (LADS): one ONNX graph per expression, its extracted static subnet.

LADS's Gating Network reads the expression alone and decides which backbone layers, filters and fusion
sublayers run; ``LADS.extract_subnet(text)`` turns one expression's hard pattern into a plain module
``images -> boxes`` in which closed parts are not computed (and the expression's text features are
constants). Each expression of ``--expressions`` becomes such a graph: input ``images`` (dynamic
batch), output ``pred_boxes``; its sidecar names the expression and a hash of its gate pattern.
Parity: onnxruntime against the extracted subnet AND against the full model's boxes for that expression.
The alternative the issue allows (the masked supernet plus the gating network as a second graph) is
not implemented.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.export.parity import check_parity, scene_image
from langground.export.sidecar import OnnxMetadata

APPROACH = (
    "gated model {name}: the extracted static subnet of each expression (one graph per expression: "
    "images -> pred_boxes; gates and text features fixed at export), {n} graph(s), {p} distinct gate pattern(s)"
)


class _WithFull(nn.Module):
    """The reference for parity: the full model's pred_boxes for the fixed expression."""

    def __init__(self, model: nn.Module, text: Any):
        super().__init__()
        self.model, self.text = model, text

    def forward(self, images: Tensor) -> tuple[Tensor]:
        n = images.shape[0]
        text = type(self.text)(self.text.token_ids.expand(n, -1), self.text.attention_mask.expand(n, -1))
        return (self.model.forward_unchecked(images, text)["pred_boxes"],)


class _Boxes(nn.Module):
    def __init__(self, subnet: nn.Module):
        super().__init__()
        self.subnet = subnet

    def forward(self, images: Tensor) -> tuple[Tensor]:
        return (self.subnet(images),)


def subnet_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one expression, else ``<stem>-000.onnx``, ``<stem>-001.onnx``... beside it."""
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix or '.onnx'}") for i in range(n)]


def export_subnets(
    ckpt: Any, out: Path, expressions: list[str] | None, *, opset: int, tolerance: float, threads: int | None
) -> Any:
    from langground.export.onnx import ExportResult, _tmp_beside, base_metadata, export_graph, land

    model = ckpt.model.eval()
    name = ckpt.config.model.name
    if not expressions:
        raise LanggroundError(
            f"{name} is a gated model: its subnet depends on the expression; pass --expressions TEXT|FILE.txt "
            "(one graph per expression is exported)"
        )
    size = int(model.input_size)
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.randn(1, 3, size, size, generator=gen),), (torch.randn(3, 3, size, size, generator=gen),)]
    cases[1][0][0] = scene_image(size)
    paths, reports, metas, patterns = subnet_paths(out, len(expressions)), [], [], set()
    for expression, path in zip(expressions, paths, strict=True):
        text = ckpt.vocab.batch([expression], model.max_text_length)
        with torch.no_grad():
            g = model.gates(text)[0]
        pattern = torch.cat([g.layer, g.filter], 1).to(torch.uint8).cpu().numpy().tobytes()
        digest = hashlib.sha1(pattern).hexdigest()[:12]
        patterns.add(digest)
        graph = _Boxes(model.extract_subnet(text)).eval()
        tmp = _tmp_beside(path)
        try:
            export_graph(graph, cases[1], tmp, ["images"], ["pred_boxes"], {"images": {0: "batch"}}, opset)
            report = check_parity(tmp, graph, cases, ["pred_boxes"], ["images"], tolerance, threads)
            full = check_parity(
                tmp, _WithFull(model, text), cases, ["pred_boxes"], ["images"], tolerance, threads
            )
            report.max_abs_diff["pred_boxes_vs_full_model"] = full.max_abs_diff["pred_boxes"]
            meta: OnnxMetadata = base_metadata(ckpt, ["pred_boxes"], opset)
            meta.inputs, meta.kind, meta.expression, meta.gate_pattern = (
                ["images"],
                "subnet",
                expression,
                digest,
            )
            meta.parity = dict(report.max_abs_diff)
            land(tmp, path, meta)
        finally:
            tmp.unlink(missing_ok=True)
        reports.append(report)
        metas.append(meta)
    approach = APPROACH.format(name=name, n=len(paths), p=len(patterns))
    return ExportResult(paths, reports, approach, metas)
