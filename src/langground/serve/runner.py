"""The model side of the server: batches of jobs through the Grounder, results as JSON-ready dicts.

Runs in the batcher's worker thread: the forward pass, the decoding to original pixels, the COCO RLE of
masks and the PNGs of attention maps all stay off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from langground.errors import LanggroundError
from langground.inference.results import shape_result
from langground.inference.unknown_words import unknown_words
from langground.postprocess import PostprocessConfig
from langground.serve.batching import Job
from langground.serve.settings import ServeSettings


@dataclass(frozen=True)
class Options:
    """What a request asks beyond its image and texts; requests with equal options share forward passes."""

    explain: bool = False
    top_k: int = 5
    box_threshold: float | None = None
    no_target_threshold: float | None = None


@dataclass
class Request:
    """One request's payload for the batcher: its image, texts, options and validated thresholds."""

    image: Image.Image
    texts: list[str]
    options: Options
    config: PostprocessConfig


class GrounderRunner:
    """``runner(jobs)`` -> per job ``{"results": [...], "words": [[...]], "batch": {...}}``; one
    :meth:`Grounder.ground` call for all the jobs, so up to ``grounder.batch_size`` pairs per forward."""

    def __init__(self, grounder: Any, settings: ServeSettings):
        self.grounder = grounder
        self.settings = settings

    def __call__(self, jobs: list[Job]) -> list[dict[str, Any]]:
        g = self.grounder
        requests: list[Request] = [j.payload for j in jobs]
        options, config = requests[0].options, requests[0].config
        outputs = g.ground(
            [r.image for r in requests],
            [r.texts for r in requests],
            explain=options.explain,
            top_k=options.top_k,
            checked=True,
            config=config,
        )
        batch = {"requests": len(jobs), "pairs": sum(len(r.texts) for r in requests)}
        answered = []
        for request, outs in zip(requests, outputs, strict=True):
            results = [
                self._to_json(
                    shape_result(
                        o,
                        text,
                        answers_questions=g.answers_questions,
                        heads=g.spec.heads,
                        no_target_threshold=config.no_target_threshold,
                        unknown_words=unknown_words(o.words, g.vocab),
                        explain=options.explain,
                    )
                )
                for o, text in zip(outs, request.texts, strict=True)
            ]
            answered.append({"results": results, "words": [o.words for o in outs], "batch": batch})
        return answered

    def _to_json(self, result: dict[str, Any]) -> dict[str, Any]:
        from langground.cli._predict_output import mask_to_rle

        out = dict(result)
        if out.get("mask") is not None:
            out["mask"] = mask_to_rle(np.asarray(out["mask"]) > 127)
        if "attention" in out:
            explanation = out["attention"] or {}
            if all(np.ndim(v) == 3 for v in explanation.values()):  # per-word maps in original pixels
                out["attention"] = self._attention_pngs(explanation)
            else:  # a gated model's explanation (LADS: the layer and filter gates of its subnet)
                out["attention"] = None
                out["subnet"] = {k: np.asarray(v).round(4).tolist() for k, v in explanation.items()}
        return out

    def _attention_pngs(self, attention: dict[str, np.ndarray] | None) -> dict[str, list[str]] | None:
        """``{stage: (n_words, H, W)}`` -> the last stages' maps as PNG data URLs, one per word, each
        min-max scaled on its own and at most ``attention_side`` pixels on its longer side."""
        if not attention:
            return None
        stages = list(attention)[-self.settings.attention_stages :]
        out: dict[str, list[str]] = {}
        for stage in stages:
            maps = np.asarray(attention[stage], dtype=np.float32)
            urls = []
            for m in maps:
                lo, hi = float(m.min()), float(m.max())
                scaled = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
                img = Image.fromarray(np.rint(scaled * 255).astype(np.uint8), mode="L")
                side = self.settings.attention_side
                if max(img.size) > side:
                    ratio = side / max(img.size)
                    img = img.resize(
                        (max(1, round(img.width * ratio)), max(1, round(img.height * ratio))),
                        Image.Resampling.BILINEAR,
                    )
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
            out[stage] = urls
        return out


def probe_explain(grounder: Any) -> bool:
    """One warm-up forward pass on a blank image; True when the model returns attention maps (explain)."""
    image = Image.new("RGB", (grounder.input_size, grounder.input_size), (128, 128, 128))
    word = next((w for w in getattr(grounder.vocab, "words", []) if w.isalpha()), "object")
    try:
        grounder.ground([image], [[word]], explain=True, checked=True)
        return True
    except LanggroundError:
        grounder.ground([image], [[word]], checked=True)
        return False


def checkpoint_info(grounder: Any, path: str | os.PathLike | None) -> dict[str, Any]:
    """The served weights: their file or checkpoint directory, their sha256 and the model's registry name."""
    model = grounder.model
    exported = getattr(model, "path", None)  # an ONNX graph (backend onnx): the file that runs
    if getattr(grounder, "backend", "torch") != "torch" and exported is not None:
        meta = getattr(model, "meta", None)
        return {
            "path": str(exported),
            "sha256": _sha256(Path(exported)),
            "name": getattr(meta, "model_name", None),
        }
    if path is None:
        return {"path": None, "sha256": None, "name": None}
    from langground.engine.checkpoint import WEIGHTS, read_metadata, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    name = read_metadata(ckpt).get("model_name")
    return {"path": str(ckpt), "sha256": _sha256(ckpt / WEIGHTS), "name": name}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
