"""``Grounder``: a trained checkpoint as a two-line Python API.

    >>> g = Grounder.from_pretrained("runs/demo")                       # doctest: +SKIP
    >>> g.predict("scene.png", "the red cube left of the ball")       # doctest: +SKIP
    {'box': {'xmin': 41.2, 'ymin': 80.0, 'xmax': 97.5, 'ymax': 131.9}, 'score': 0.93, 'mask': None,
     'no_target': None, 'expression': 'the red cube left of the ball'}

Results are in ORIGINAL image pixels and shaped like Hugging Face pipeline outputs. Each image is decoded
and letterboxed once, however many expressions it comes with; all (image, expression) pairs run through
the model in batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.inference.images import ImageInput, check_expressions, load_image
from langground.postprocess import PostprocessConfig, postprocess, unletterbox_map
from langground.tasks import get_task
from langground.text.vocab import Vocabulary
from langground.types import Prediction


@dataclass
class GroundingOutput:
    """Everything one (image, expression) pair produced, before it is shaped into a result dict.

    Attributes:
        prediction: boxes / mask / no-target / answer in original pixels.
        answers: VQA top-k ``[(answer, probability)]``, best first (empty for grounding models).
        words: the tokens the model read (after truncation).
        attention: ``{stage: (len(words), H, W)}`` cross-modal attention in original pixels (explain only).
    """

    prediction: Prediction
    answers: list[tuple[str, float]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    attention: dict[str, np.ndarray] | None = None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Grounder:
    """A model + its vocabulary + its preprocessing, ready to ground expressions in images.

    Args:
        model: a module following the model contract (eval mode is set here).
        vocab: the word vocabulary the model was trained with.
        input_size: side of the square letterboxed input.
        max_text_length: expressions are truncated to this many words (with a warning).
        task: ``rec``, ``res``, ``gref``, ``gres`` or ``vqa``.
        answers: VQA answer strings in id order.
        postprocess_config: thresholds for masks / box sets / no-target.
        device: ``cpu``, ``cuda``, ``auto``...
        batch_size: (image, expression) pairs per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        vocab: Vocabulary,
        *,
        input_size: int,
        max_text_length: int,
        task: str,
        answers: Sequence[str] | None = None,
        postprocess_config: PostprocessConfig | None = None,
        device: str | torch.device | None = "cpu",
        batch_size: int = 16,
    ):
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.input_size = int(input_size)
        self.max_text_length = int(max_text_length)
        self.task = task
        self.spec = get_task(task)
        self.answers = list(answers) if answers is not None else None
        self.postprocess_config = postprocess_config or PostprocessConfig()
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device | None = "cpu", batch_size: int = 16
    ) -> Grounder:
        """Load a checkpoint directory, or a run directory (its ``best/``, else its newest checkpoint).

        Raises:
            CheckpointError: one line naming the path and the problem.
        """
        from langground.engine.checkpoint import load_checkpoint  # engine pulls in the model zoo

        dev = _resolve_device(device)
        ckpt = load_checkpoint(path, device=dev)
        cfg = ckpt.config
        return cls(
            ckpt.model,
            ckpt.vocab,
            input_size=cfg.transforms.input_size,
            max_text_length=cfg.data.max_text_length,
            task=cfg.model.task,
            answers=ckpt.answers,
            postprocess_config=cfg.postprocess,
            device=dev,
            batch_size=batch_size,
        )

    # ------------------------------------------------------------------------------------ public API

    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        expressions: str | Sequence[str] | Sequence[str | Sequence[str]],
        *,
        explain: bool = False,
        top_k: int = 5,
    ) -> Any:
        """Ground ``expressions`` in ``image`` (or answer questions, for a VQA model).

        Args:
            image: a path, PIL image, numpy array or tensor, or a list of them.
            expressions: for one image, a string or a list of strings; for a list of images, a list with
                one string or list of strings per image.
            explain: add ``"words"`` and ``"attention"`` (``{stage: (len(words), H, W)}`` float arrays of
                the per-word cross-modal attention in original pixels) to each result.
            top_k: VQA answers returned per question.

        Returns:
            Per expression, a dict ``{"box": {"xmin", "ymin", "xmax", "ymax"} | None, "score", "mask"
            (PIL "L", 255 = referent) | None, "no_target" (probability) | None, "expression"}``; generalized
            REC models add ``"boxes": [{"box", "score"}, ...]`` (``box`` is the best of them). VQA models
            give ``[{"answer", "score"}, ...]`` (top-k), or with ``explain`` a dict with ``"answers"``.
            A single string gives a single result, a list a list; a list of images a list per image.
        """
        many_images = isinstance(image, (list, tuple))
        images = list(image) if many_images else [image]
        if many_images:
            if isinstance(expressions, str) or len(expressions) != len(images):
                n = 1 if isinstance(expressions, str) else len(expressions)
                raise LanggroundError(
                    f"got {len(images)} images but {n} expression entries: expected one string or list of "
                    "strings per image"
                )
            per_image = list(expressions)
        else:
            per_image = [expressions]
        single = [isinstance(e, str) for e in per_image]
        texts = [[e] if isinstance(e, str) else list(e) for e in per_image]
        for i, t in enumerate(texts):
            if not t:
                raise LanggroundError(f"image {i}: no expressions given: expected at least one")
        # Text first (cheap), then pixels; the truncation warning points at the caller's line.
        check_expressions([t for ts in texts for t in ts], self.max_text_length, stacklevel=3)
        pil = [load_image(im) for im in images]
        outputs = self.ground(pil, texts, explain=explain, top_k=top_k, checked=True)
        shaped = [
            [self._shape(o, text, explain) for o, text in zip(outs, ts, strict=True)]
            for outs, ts in zip(outputs, texts, strict=True)
        ]
        results = [r[0] if s else r for r, s in zip(shaped, single, strict=True)]
        return results if many_images else results[0]

    def ground(
        self,
        images: Sequence[Image.Image],
        expressions: Sequence[Sequence[str]],
        *,
        explain: bool = False,
        top_k: int = 5,
        checked: bool = False,
    ) -> list[list[GroundingOutput]]:
        """Lower-level :meth:`predict`: RGB PIL images and their expressions -> :class:`GroundingOutput` lists.

        ``checked=True`` skips the expression checks (the caller ran :func:`check_expressions`).
        """
        from langground.data.transforms import preprocess_image

        if not checked:
            check_expressions([t for texts in expressions for t in texts], self.max_text_length, stacklevel=3)
        canvases, transforms, sizes = [], [], []
        for img in images:
            tensor, transform = preprocess_image(img, self.input_size)
            canvases.append(tensor)
            transforms.append(tuple(float(v) for v in transform))
            sizes.append((img.height, img.width))
        pairs = [(i, text) for i, texts in enumerate(expressions) for text in texts]
        results: list[GroundingOutput] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            results += self._run_batch(chunk, canvases, transforms, sizes, explain, top_k)
        out: list[list[GroundingOutput]] = []
        k = 0
        for texts in expressions:
            out.append(results[k : k + len(texts)])
            k += len(texts)
        return out

    # ------------------------------------------------------------------------------------ internals

    @torch.inference_mode()
    def _run_batch(
        self,
        chunk: list[tuple[int, str]],
        canvases: list[Tensor],
        transforms: list[tuple[float, float, float]],
        sizes: list[tuple[int, int]],
        explain: bool,
        top_k: int,
    ) -> list[GroundingOutput]:
        idx = [i for i, _ in chunk]
        images = torch.stack([canvases[i] for i in idx]).to(self.device)
        text = self.vocab.batch([t for _, t in chunk], self.max_text_length).to(self.device)
        raw = self.model(images, text)
        tfs, szs = [transforms[i] for i in idx], [sizes[i] for i in idx]
        preds = postprocess(
            raw,
            tfs,
            szs,
            self.task,
            canvas_size=self.input_size,
            answer_vocab=self.answers,
            config=self.postprocess_config,
        )
        answers: list[list[tuple[str, float]]] = [[] for _ in chunk]
        if "pred_answer" in raw:
            probs = raw["pred_answer"].float().softmax(dim=-1).cpu()
            values, ids = probs.topk(min(max(1, top_k), probs.shape[-1]), dim=-1)
            names = self.answers
            answers = [
                [
                    (names[j] if names else str(j), float(v))
                    for v, j in zip(vs.tolist(), js.tolist(), strict=True)
                ]
                for vs, js in zip(values, ids, strict=True)
            ]
        attention = self._attention(raw, text.tokens, tfs, szs) if explain else [None] * len(chunk)
        return [
            GroundingOutput(pred, ans, list(words), att)
            for pred, ans, words, att in zip(preds, answers, text.tokens, attention, strict=True)
        ]

    def _attention(
        self,
        raw: dict[str, Any],
        tokens: list[list[str]],
        transforms: list[tuple[float, float, float]],
        sizes: list[tuple[int, int]],
    ) -> list[dict[str, np.ndarray]]:
        maps = (raw.get("aux") or {}).get("attention")
        if not maps:
            name = type(self.model).__name__
            raise LanggroundError(
                f"model {name} returns no cross-modal attention (outputs['aux']['attention']): explain needs "
                "a model that exposes it, such as LaConvNet"
            )
        out: list[dict[str, np.ndarray]] = []
        for b, words in enumerate(tokens):
            per_stage = {}
            for stage, att in maps.items():
                # (L, h, w) on the canvas -> (n_words, H, W) on the original image.
                a = att[b, : len(words)].float().cpu()
                per_stage[str(stage)] = unletterbox_map(a, transforms[b], sizes[b], self.input_size).numpy()
            out.append(per_stage)
        return out

    def _shape(self, o: GroundingOutput, expression: str, explain: bool) -> Any:
        p = o.prediction
        if "answer" in self.spec.heads:
            answers = [{"answer": a, "score": s} for a, s in o.answers]
            if not explain:
                return answers
            result: dict[str, Any] = {"answers": answers, "expression": expression}
        else:
            boxes = [{"box": _box_dict(b), "score": float(s)} for b, s in zip(p.boxes, p.scores, strict=True)]
            result = {
                "box": boxes[0]["box"] if boxes else None,
                "score": boxes[0]["score"] if boxes else None,
                "mask": None if p.mask is None else Image.fromarray(p.mask.astype(np.uint8) * 255),
                "no_target": p.no_target,
                "expression": expression,
                "boxes": boxes,  # every box, best first (several for generalized REC, none for no target)
            }
        if explain:
            result["words"] = o.words
            result["attention"] = o.attention
        return result


def _box_dict(box: np.ndarray) -> dict[str, float]:
    x0, y0, x1, y1 = (round(float(v), 2) for v in box)
    return {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
