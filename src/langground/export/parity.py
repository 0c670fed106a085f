"""Parity of an exported graph with PyTorch: onnxruntime vs eager on several batch sizes and lengths.

Inputs: random normal images and a "real-looking" one (a rendered scene of flat shapes through the
Grounder's own letterbox + normalisation), random words with right padding as ``Vocabulary.batch``
makes them; batch sizes 1-3 and lengths from 1 word to ``max_text_length``, so the dynamic axes are
exercised away from the traced shape. A max abs diff over the tolerance is a :class:`ParityError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from langground.errors import LanggroundError

__all__ = ["ParityError", "ParityReport", "check_parity", "make_session", "pad_text", "parity_inputs"]

DEFAULT_TOLERANCE = 1e-4


class ParityError(LanggroundError):
    """The exported graph disagrees with PyTorch beyond the tolerance."""


@dataclass
class ParityReport:
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # output -> worst over all cases
    # output -> worst |onnx - torch| / max(1, |torch|): what the tolerance bounds (see check_parity)
    max_scaled_diff: dict[str, float] = field(default_factory=dict)
    cases: list[tuple[int, int]] = field(default_factory=list)  # (batch, words) checked
    # output -> how far PyTorch's own outputs for different inputs of a batch lie apart: a diff is
    # only meaningful next to it (an output that ignores its input would pass any graph)
    spread: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        def one(k: str, v: float) -> str:
            scaled = self.max_scaled_diff.get(k, v)
            return f"{k} {v:.2e}" if scaled >= v else f"{k} {v:.2e} (relative {scaled:.1e})"

        diffs = ", ".join(one(k, v) for k, v in self.max_abs_diff.items())
        if all(length == 0 for _, length in self.cases):  # image-only graphs (subnets)
            return f"max abs diff: {diffs} (batch sizes: {' '.join(str(n) for n, _ in self.cases)})"
        shapes = " ".join(f"{n}x{length}" for n, length in self.cases)
        return f"max abs diff: {diffs} (batch x words: {shapes})"


def make_session(path: str | os.PathLike, threads: int | None = None, device: str = "cpu"):  # noqa: ANN201
    """An onnxruntime session (CUDA provider for ``device='cuda...'`` when onnxruntime has it)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise LanggroundError(
            "the onnx backend needs onnxruntime: pip install 'langground[export]'"
        ) from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: failures come back as exceptions, reported in one line
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own (multi-line) exception types
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise LanggroundError(f"{path}: onnxruntime cannot load the graph: {first}") from None


def scene_image(size: int, seed: int = 0) -> Tensor:
    """A rendered scene (grey floor, a few coloured boxes and discs), letterboxed and normalised."""
    from langground.data.transforms import preprocess_image

    rng = np.random.default_rng(seed)
    w, h = int(size * 1.4), size
    img = Image.new("RGB", (w, h), (118, 118, 112))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(8, w // 3)), y0 + int(rng.integers(8, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
    return preprocess_image(img, size)[0]


def parity_inputs(
    input_size: int, max_text_length: int, vocab_size: int, seed: int = 0
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``(images, token_ids, attention_mask)`` cases: batch 1-3, lengths 1..max, padded rows."""
    gen = torch.Generator().manual_seed(seed)
    long = max_text_length
    mid = max(1, min(long, 3))
    cases = [(1, 1), (2, mid), (3, long), (1, long)]
    out = []
    for i, (n, length) in enumerate(cases):
        images = torch.randn(n, 3, input_size, input_size, generator=gen)
        if i % 2 == 1:
            images[0] = scene_image(input_size, seed=seed + i)
        ids = torch.randint(2, max(3, vocab_size), (n, length), generator=gen)
        ids[:, 0] = 1 if i == 3 else ids[:, 0]  # an unknown word somewhere
        lengths = torch.randint(1, length + 1, (n,), generator=gen)
        lengths[0] = length  # the longest row sets L, as Vocabulary.batch pads
        mask = torch.arange(length)[None, :] < lengths[:, None]
        out.append((images, ids.masked_fill(~mask, 0), mask))
    return out


def pad_text(token_ids: Tensor, attention_mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Right-pad ``(N, L)`` ids (with 0) and mask (with False) to ``(N, length)``."""
    extra = length - token_ids.shape[1]
    if extra <= 0:
        return token_ids, attention_mask
    return torch.nn.functional.pad(token_ids, (0, extra)), torch.nn.functional.pad(attention_mask, (0, extra))


def check_parity(
    path: str | os.PathLike,
    reference: Callable[..., Sequence[Tensor]],
    inputs: Sequence[Sequence[Tensor]],
    output_names: Sequence[str],
    input_names: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int | None = None,
    pad_to: int | None = None,
) -> ParityReport:
    """Run the graph at ``path`` and ``reference`` (eager PyTorch) on every case; raise if an output
    differs by more than ``tolerance * max(1, |torch|)`` anywhere: an absolute bound for values within
    +-1 (normalised boxes, scores, probabilities, embeddings), a relative one for large raw logits,
    whose float32 rounding alone exceeds 1e-4 (PyTorch fp32 vs float64: 1.5e-4 on DMN's mask logits
    of ~50). NaN on either side, or a shape mismatch, fails.

    ``pad_to``: the graph has a fixed text length; its inputs are padded to it (the reference's are not,
    so the check also proves that the model ignores padding)."""
    session = make_session(path, threads)
    graph_inputs = {i.name for i in session.get_inputs()}  # the tracer drops inputs no output reads
    report = ParityReport({k: 0.0 for k in output_names})
    for case in inputs:
        fed = list(case)
        if pad_to is not None:
            fed[1], fed[2] = pad_text(case[1], case[2], pad_to)
        feed = {
            name: t.cpu().numpy() for name, t in zip(input_names, fed, strict=True) if name in graph_inputs
        }
        try:
            got = session.run(list(output_names), feed)
        except Exception as e:  # noqa: BLE001
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ParityError(
                f"{path}: onnxruntime failed on inputs {[tuple(t.shape) for t in case]}: {first}"
            ) from None
        with torch.inference_mode():
            ref = [t.detach().float().cpu().numpy() for t in reference(*case)]
        n, length = case[0].shape[0], case[1].shape[1] if len(case) > 1 else 0
        report.cases.append((int(n), int(length)))
        for name, r, g in zip(output_names, ref, got, strict=True):
            if r.shape != g.shape:
                raise ParityError(
                    f"{path}: output {name} has shape {g.shape} in onnxruntime, {r.shape} in PyTorch"
                )
            err = np.abs(r - g.astype(np.float32))
            diff = float(err.max()) if r.size else 0.0
            scaled = float((err / np.maximum(1.0, np.abs(r))).max()) if r.size else 0.0
            if not (np.isfinite(diff) and np.isfinite(scaled)):
                diff = scaled = float("inf")
            report.max_abs_diff[name] = max(report.max_abs_diff[name], diff)
            report.max_scaled_diff[name] = max(report.max_scaled_diff.get(name, 0.0), scaled)
            if r.ndim and r.shape[0] > 1:
                report.spread[name] = max(report.spread.get(name, 0.0), float(np.abs(r - r[:1]).max()))
    worst = max(report.max_scaled_diff, key=lambda k: report.max_scaled_diff[k])
    if report.max_scaled_diff[worst] > tolerance:
        hint = ""
        if worst == "pred_boxes" and report.max_scaled_diff.get("pred_box_logits", 1.0) <= tolerance:
            hint = "; pred_box_logits agree: a near-tie for the best box (an untrained head?)"
        raise ParityError(
            f"{path}: parity check FAILED: {worst} max abs diff {report.max_abs_diff[worst]:.3e} > tolerance "
            f"{tolerance:g} (onnxruntime vs PyTorch; {report.line()}{hint})"
        )
    return report
