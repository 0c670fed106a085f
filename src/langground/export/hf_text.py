"""Models with a pretrained Hugging Face text encoder (MiniLM, BERT, a local checkpoint) as ONNX graphs.

Such an encoder retokenises the batch's words with its own WordPiece tokenizer inside ``forward``
(Python, not traceable). The graph therefore also takes the tokenizer's output: inputs ``images``, the
word-level ``token_ids`` / ``attention_mask`` ``(N, L)`` the model's ``TextBatch`` holds (as
``Vocabulary.batch`` makes them), and ``subword_ids`` / ``subword_mask`` / ``word_index`` ``(N, L_tok)``
int64 (what :func:`~langground.models.text_encoders.hf_tokenize` makes), fed to
:meth:`MiniLMTextEncoder.encode_ids` in place of its tokenising ``forward``; batch, word and sub-word
lengths are dynamic. The tokenizer is saved next to the graph
(``<stem>.tokenizer/``, ``save_pretrained``) and the sidecar names it with its ``max_length``, so the
runtime tokenises exactly as the encoder does. ``word_index`` (each sub-word's word, -1 for [CLS] /
[SEP] / padding) is an input because models read it (RefTR's query mask, SLAN's word pooling), the word
ids because some read their shape and mask (SLAN); the tracer drops the inputs no exported output depends
on (TransVG keeps only the sub-words), and the sidecar lists the inputs the graph really has.

Parity: onnxruntime against eager PyTorch on the same tokenised inputs, and that eager path against
the model's own forward on the raw sentences (the encoder tokenising itself): both within tolerance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from langground.export.graph import tensor_outputs
from langground.types import TextBatch

__all__ = [
    "HF_INPUTS",
    "SUBWORD_INPUTS",
    "PARITY_SENTENCES",
    "HFTextGraph",
    "hf_encoders",
    "hf_parity_inputs",
    "save_tokenizer",
]

HF_INPUTS = ("images", "token_ids", "attention_mask", "subword_ids", "subword_mask", "word_index")
SUBWORD_INPUTS = HF_INPUTS[3:]
#: real expressions of different lengths (sub-word counts), one with a word MiniLM splits into pieces
PARITY_SENTENCES = (
    "man",
    "the red cup on the left",
    "a woman in a blue shirt holding an umbrella next to the tall lamp post near the bus",
    "zebra",
    "second giraffe from the right",
    "unmistakably overexposed photograph",
)


def hf_encoders(model: nn.Module) -> list[nn.Module]:
    from langground.models.text_encoders import MiniLMTextEncoder

    return [m for m in model.modules() if isinstance(m, MiniLMTextEncoder)]


@contextlib.contextmanager
def _pretokenised(encoders: list[nn.Module], ids: Tensor, mask: Tensor, word_index: Tensor) -> Iterator[None]:
    """Within the block each encoder ignores the ``TextBatch`` it is given and encodes these sub-words
    (an instance ``forward``: the class is untouched)."""

    def forward(self: Any, text: TextBatch) -> Any:
        return self.encode_ids(ids, mask, word_index)

    try:
        for enc in encoders:
            enc.forward = types.MethodType(forward, enc)
        yield
    finally:
        for enc in encoders:
            enc.__dict__.pop("forward", None)


class HFTextGraph(nn.Module):
    """``model`` as ``(images, token_ids, attention_mask, subword_ids, subword_mask, word_index) -> tuple``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.encoders = hf_encoders(model)
        self.output_names: list[str] = []
        self.example_shapes: dict[str, tuple[int, ...]] = {}

    def forward(
        self,
        images: Tensor,
        token_ids: Tensor,
        attention_mask: Tensor,
        subword_ids: Tensor,
        subword_mask: Tensor,
        word_index: Tensor,
    ) -> tuple[Tensor, ...]:
        with _pretokenised(self.encoders, subword_ids, subword_mask, word_index):
            out = self.model.forward_unchecked(images, TextBatch(token_ids, attention_mask.bool()))
        if not self.output_names:
            self.output_names = tensor_outputs(out)
        return tuple(out[k] for k in self.output_names)

    @torch.no_grad()
    def discover(self, *case: Tensor) -> list[str]:
        self.output_names = []
        values = self(*case)
        self.example_shapes = {k: tuple(v.shape) for k, v in zip(self.output_names, values, strict=True)}
        return self.output_names


def hf_parity_inputs(
    model: nn.Module, vocab: Any, seed: int = 0
) -> tuple[list[tuple[Tensor, ...]], list[TextBatch]]:
    """Cases of batch 1 / 2 / 3 / 1 with the sentences above (1 to ~20 sub-words, padded rows), and the
    word-level batches they were tokenised from (the reference of the model's own forward)."""
    from langground.export.parity import scene_image
    from langground.models.text_encoders import hf_tokenize

    enc = hf_encoders(model)[0]
    gen = torch.Generator().manual_seed(seed)
    s = PARITY_SENTENCES
    groups = [[s[0]], [s[1], s[3]], [s[2], s[4], s[0]], [s[5]]]
    size = int(model.input_size)
    cases, batches = [], []
    for i, texts in enumerate(groups):
        images = torch.randn(len(texts), 3, size, size, generator=gen)
        if i % 2 == 1:
            images[0] = scene_image(size, seed=seed + i)
        batch = vocab.batch(texts, int(model.max_text_length))
        cases.append(
            (
                images,
                batch.token_ids,
                batch.attention_mask,
                *hf_tokenize(enc.tokenizer, batch, enc.max_length),
            )
        )
        batches.append(batch)
    return cases, batches


def save_tokenizer(model: nn.Module, out: Path) -> Path:
    """``tokenizer.save_pretrained`` into ``<stem>.tokenizer/`` beside ``out`` (a temporary folder,
    renamed into place: an old folder is replaced whole)."""
    from langground._files import chmod_tree_default

    target = out.with_name(f"{out.stem}.tokenizer")
    tmp = Path(tempfile.mkdtemp(dir=out.parent if str(out.parent) else ".", prefix=f".{target.name}-"))
    try:
        hf_encoders(model)[0].tokenizer.save_pretrained(str(tmp))
        chmod_tree_default(tmp)
        if target.is_dir():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_hf_static(ckpt: Any, out: Path, *, opset: int, tolerance: float, threads: int | None) -> Any:
    """Trace, check and land a static model whose text encoder is a Hugging Face one (module docstring)."""
    import onnx

    from langground.export.onnx import ExportResult, _tmp_beside, base_metadata, export_graph, land
    from langground.export.parity import ParityError, check_parity

    model = ckpt.model.eval()
    cases, batches = hf_parity_inputs(model, ckpt.vocab)
    graph = HFTextGraph(model).eval()
    names = graph.discover(*cases[1])
    vs_forward = _against_forward(graph, model, cases, batches, names)
    worst = max(vs_forward, key=lambda k: vs_forward[k])
    if vs_forward[worst] > tolerance:  # the pretokenised path must BE the model's forward
        raise ParityError(
            f"{ckpt.config.model.name}: {worst} of the pretokenised text path differs from the model's own "
            f"forward by {vs_forward[worst]:.3e} > {tolerance:g} (PyTorch vs PyTorch)"
        )
    axes: dict[str, dict[int, str]] = {"images": {0: "batch"}}
    axes.update({k: {0: "batch", 1: "words"} for k in ("token_ids", "attention_mask")})
    axes.update({k: {0: "batch", 1: "subwords"} for k in SUBWORD_INPUTS})
    batch = int(cases[1][0].shape[0])
    axes.update({k: {0: "batch"} for k, shape in graph.example_shapes.items() if shape[:1] == (batch,)})
    tmp = _tmp_beside(out)
    try:
        export_graph(graph, cases[1], tmp, list(HF_INPUTS), names, axes, opset)
        report = check_parity(tmp, graph, cases, names, list(HF_INPUTS), tolerance, threads)
        for k, v in vs_forward.items():
            report.max_abs_diff[f"{k}_vs_forward_on_texts"] = v
        inputs = [i.name for i in onnx.load(str(tmp), load_external_data=False).graph.input]
        enc = hf_encoders(model)[0]
        folder = save_tokenizer(model, out)
        meta = base_metadata(ckpt, names, opset)
        meta.inputs, meta.text_tokenizer, meta.text_max_length = inputs, folder.name, int(enc.max_length)
        meta.parity, meta.parity_relative = dict(report.max_abs_diff), dict(report.max_scaled_diff)
        land(tmp, out, meta)
    finally:
        tmp.unlink(missing_ok=True)
    approach = (
        f"static graph with a Hugging Face text encoder ({type(enc.bert).__name__}): inputs {', '.join(inputs)} "
        f"(the tokenizer's sub-words, saved in {folder.name}/; dynamic batch and length) -> {', '.join(names)}"
    )
    return ExportResult([out], [report], approach, [meta])


@torch.no_grad()
def _against_forward(
    graph: HFTextGraph,
    model: nn.Module,
    cases: list[tuple[Tensor, ...]],
    batches: list[TextBatch],
    names: list[str],
) -> dict[str, float]:
    """Max abs diff per output: the pretokenised path vs ``forward_unchecked`` on the word batches."""
    worst = dict.fromkeys(names, 0.0)
    for case, batch in zip(cases, batches, strict=True):
        own = model.forward_unchecked(case[0], batch)
        for name, got in zip(names, graph(*case), strict=True):
            if own[name].shape != got.shape:
                from langground.export.parity import ParityError

                raise ParityError(
                    f"{type(model).__name__}: output {name} is {tuple(got.shape)} on the pretokenised text path, "
                    f"{tuple(own[name].shape)} in the model's forward"
                )
            worst[name] = max(worst[name], float((own[name] - got).abs().max()))
    return worst
