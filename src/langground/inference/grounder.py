"""``Grounder``: a trained checkpoint as a two-line Python API.

    >>> g = Grounder.from_pretrained("runs/demo")                       # doctest: +SKIP
    >>> g.predict("scene.png", "the red cube left of the ball")       # doctest: +SKIP
    {'box': {'xmin': 41.2, 'ymin': 80.0, 'xmax': 97.5, 'ymax': 131.9}, 'score': 0.93, 'mask': None,
     'no_target': None, 'has_target': None, 'expression': 'the red cube left of the ball',
     'boxes': [{'box': {...}, 'score': 0.93}], 'unknown_words': []}

Results are in ORIGINAL image pixels and shaped like Hugging Face pipeline outputs. Each image is decoded
and letterboxed once, however many expressions it comes with; all (image, expression) pairs run through
the model in batches. Words outside the vocabulary are read as ``<unk>``: each result lists them
(``unknown_words``) and :meth:`Grounder.predict` warns once per call (:class:`UnknownWordsWarning`).

Result shaping lives in :mod:`~langground.inference.results`, threshold overrides in
:mod:`~langground.inference.thresholds`, the unknown-word warning in
:mod:`~langground.inference.unknown_words`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.inference.images import ImageInput, check_expressions, load_image, read_form
from langground.inference.results import GroundingOutput, attention_maps, shape_result, top_answers
from langground.inference.thresholds import override_thresholds
from langground.inference.unknown_words import unknown_words, warn_unknown
from langground.postprocess import PostprocessConfig, postprocess
from langground.tasks import get_task
from langground.text.vocab import Vocabulary

__all__ = ["BACKENDS", "SYNTHETIC_DATASET", "Grounder", "GroundingOutput", "resolve_device"]

#: ``config.data.dataset`` of checkpoints trained on the synthetic world (its words and rendered scenes only)
SYNTHETIC_DATASET = "synth"
#: what runs the model: PyTorch, or an exported ONNX graph through onnxruntime (``langground export``)
BACKENDS = ("torch", "onnx")


def resolve_device(device: str | torch.device | None, option: str = "device") -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; an unknown name or a missing GPU is a one-line
    :class:`LanggroundError` naming ``option`` (the engine's own rule: ``engine.builders.resolve_device``)."""
    from langground.engine.builders import resolve_device as engine_resolve_device

    return engine_resolve_device("auto" if device is None else str(device), option=option)


class Grounder:
    """A model + its vocabulary + its preprocessing, ready to ground expressions in images.

    Args:
        model: a module following the model contract (eval mode is set here).
        vocab: the word vocabulary the model was trained with.
        input_size: side of the square letterboxed input.
        max_text_length: expressions are truncated to this many words (with a warning).
        task: a registered task name (``rec``, ``res``, ``gref``, ``gres``, ``vqa``...).
        answers: VQA answer strings in id order.
        postprocess_config: thresholds for masks / box sets / no-target.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``auto``...
        batch_size: (image, expression) pairs per forward pass.
        trained_on: the dataset the checkpoint was trained on (``config.data.dataset``); ``synth`` makes
            the unknown-word warning say that the model only knows the synthetic world.
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
        trained_on: str | None = None,
    ):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.vocab = vocab
        self.input_size = int(input_size)
        self.max_text_length = int(max_text_length)
        self.task = task
        self.spec = get_task(task)
        self.answers = list(answers) if answers is not None else None
        self.postprocess_config = postprocess_config or PostprocessConfig()
        self.batch_size = max(1, int(batch_size))
        self.trained_on = trained_on
        #: ``torch`` or ``onnx`` (set by :meth:`from_pretrained`)
        self.backend = "torch"

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = "cpu",
        batch_size: int = 16,
        backend: str = "torch",
    ) -> Grounder:
        """Load a checkpoint directory, or a run directory (its ``best/``, else its newest checkpoint).

        ``backend="onnx"`` runs an exported model (``langground export``) through onnxruntime instead:
        ``path`` is the ``.onnx`` file (its ``.json`` sidecar beside it) or a directory holding one.

        Raises:
            CheckpointError: one line naming the path and the problem.
            LanggroundError: an unknown device or backend, or CUDA asked for on a machine without it.
        """
        if backend not in BACKENDS:
            raise LanggroundError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        dev = resolve_device(device)
        if backend == "onnx":
            from langground.inference.onnx_backend import load_onnx_model

            loaded = load_onnx_model(path, device=dev)
            meta = loaded.meta
            grounder = cls(
                loaded,
                Vocabulary(meta.vocab),
                input_size=meta.input_size,
                max_text_length=meta.max_text_length,
                task=meta.task,
                answers=meta.answers,
                postprocess_config=PostprocessConfig(**meta.postprocess),
                device=dev,
                batch_size=batch_size,
                trained_on=meta.trained_on,
            )
            grounder.backend = "onnx"
            return grounder

        from langground.engine.checkpoint import load_checkpoint  # engine pulls in the model zoo

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
            trained_on=cfg.data.dataset,
        )

    @property
    def synthetic_only(self) -> bool:
        """The checkpoint was trained on the synthetic world only: it knows its words and scenes, not photos."""
        return self.trained_on == SYNTHETIC_DATASET

    @property
    def answers_questions(self) -> bool:
        """The task answers questions (VQA) instead of locating the referent."""
        return "answer" in self.spec.heads

    # ------------------------------------------------------------------------------------ public API

    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        expressions: str | Sequence[str] | Sequence[str | Sequence[str]],
        *,
        explain: bool = False,
        top_k: int = 5,
        box_threshold: float | None = None,
        no_target_threshold: float | None = None,
    ) -> Any:
        """Ground ``expressions`` in ``image`` (or answer questions, for a VQA model).

        Args:
            image: a path, PIL image, numpy array or tensor, or a list of them.
            expressions: for one image, a string or a list of strings; for a list of images, a list with
                one string or list of strings per image.
            explain: add ``"words"`` and ``"attention"`` (``{stage: (len(words), H, W)}`` float arrays of
                the per-word cross-modal attention in original pixels) to each result.
            top_k: VQA answers returned per question.
            box_threshold: generalized REC keeps the boxes scoring at least this (the checkpoint's
                ``postprocess.box_set_threshold`` by default).
            no_target_threshold: generalized REC/RES say "no target" when its probability is at least this
                (the checkpoint's ``postprocess.no_target_threshold`` by default).

        Returns:
            Per expression, a dict. Grounding models: ``{"box": {"xmin", "ymin", "xmax", "ymax"} | None,
            "score", "mask" (PIL "L", 255 = referent) | None, "no_target" (probability) | None,
            "has_target" (the decision: bool; None without a no-target head), "expression",
            "boxes": [{"box", "score"}, ...] (all, best first; ``box`` is the first), "unknown_words"}``.
            VQA models: ``{"expression" (the question), "answer", "score" (the best answer),
            "answers": [{"answer", "score"}, ...] (top-k), "unknown_words"}``.
            A single string gives a single result, a list a list; a list of images a list per image.

        Warns:
            TruncationWarning: expressions longer than the model reads (once per call).
            UnknownWordsWarning: words outside the vocabulary, with their share (once per call).
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
        if explain and self.backend == "onnx":
            self.ground([], [], explain=True)  # the one-line error, before any image is decoded
        config = self.thresholds(box_threshold=box_threshold, no_target_threshold=no_target_threshold)
        # Text first (cheap), then pixels; the warnings point at the caller's line.
        check_expressions([t for ts in texts for t in ts], self.max_text_length, stacklevel=3)
        pil = [load_image(im) for im in images]
        outputs = self.ground(pil, texts, explain=explain, top_k=top_k, checked=True, config=config)
        words_read = [o.words for outs in outputs for o in outs]
        warn_unknown(words_read, self.vocab, synthetic_only=self.synthetic_only, stacklevel=3)
        shaped = [
            [self._shape(o, text, explain, config) for o, text in zip(outs, ts, strict=True)]
            for outs, ts in zip(outputs, texts, strict=True)
        ]
        results = [r[0] if s else r for r, s in zip(shaped, single, strict=True)]
        return results if many_images else results[0]

    def thresholds(
        self, *, box_threshold: float | None = None, no_target_threshold: float | None = None
    ) -> PostprocessConfig:
        """The checkpoint's postprocess thresholds with these overrides (None: keep), validated.

        Raises:
            LanggroundError: a value outside [0, 1], or a threshold the task does not use (a box-set
                threshold for a one-box model, a no-target threshold for a model without that head).
        """
        return override_thresholds(
            self.postprocess_config,
            self.spec,
            box_threshold=box_threshold,
            no_target_threshold=no_target_threshold,
        )

    def read_form(self, expression: str) -> str:
        """What the model reads of ``expression``: itself, or its first words + an ellipsis when longer."""
        return read_form(expression, self.max_text_length)

    def ground(
        self,
        images: Sequence[Image.Image],
        expressions: Sequence[Sequence[str]],
        *,
        explain: bool = False,
        top_k: int = 5,
        checked: bool = False,
        config: PostprocessConfig | None = None,
    ) -> list[list[GroundingOutput]]:
        """Lower-level :meth:`predict`: RGB PIL images and their expressions -> :class:`GroundingOutput` lists.

        ``checked=True`` skips the expression checks (the caller ran :func:`check_expressions`);
        ``config``: thresholds (the checkpoint's by default, see :meth:`thresholds`).
        """
        from langground.data.transforms import preprocess_image

        if explain and self.backend == "onnx":
            raise LanggroundError(
                "explain is not supported by the onnx backend (the exported graph has no attention maps): "
                "use backend='torch'"
            )
        if not checked:
            check_expressions([t for texts in expressions for t in texts], self.max_text_length, stacklevel=3)
        config = config or self.postprocess_config
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
            results += self._run_batch(chunk, canvases, transforms, sizes, explain, top_k, config)
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
        config: PostprocessConfig,
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
            self.spec,
            canvas_size=self.input_size,
            answer_vocab=self.answers,
            config=config,
        )
        answers: list[list[tuple[str, float]]] = [[] for _ in chunk]
        if "pred_answer" in raw:
            answers = top_answers(raw["pred_answer"], self.answers, top_k)
        attention: list[Any] = [None] * len(chunk)
        if explain:
            name = type(self.model).__name__
            attention = attention_maps(raw, text.tokens, tfs, szs, self.input_size, name)
        return [
            GroundingOutput(pred, ans, list(words), att)
            for pred, ans, words, att in zip(preds, answers, text.tokens, attention, strict=True)
        ]

    def _shape(
        self, o: GroundingOutput, expression: str, explain: bool, config: PostprocessConfig
    ) -> dict[str, Any]:
        return shape_result(
            o,
            expression,
            answers_questions=self.answers_questions,
            heads=self.spec.heads,
            no_target_threshold=config.no_target_threshold,
            unknown_words=unknown_words(o.words, self.vocab),
            explain=explain,
        )
