"""The task contract: what a task predicts, how it is trained, decoded to original pixels and scored.

A task is an object registered by name (``langground.tasks.register_task``). The engine, the evaluator,
the Grounder and the models ask the task instead of switching on its name, so a new task is one file:

- ``heads``: the output heads a model builds for it (``box``, ``mask``, ``no_target``, ``answer``,
  ``phrase_box``, ``embedding``); a model looks up ``"mask" in task.heads``, never the task's name;
- ``loss_terms(outputs, targets, **options)``: the unweighted ``loss_*`` terms (the criterion weighs
  them, adds per-layer ``aux_outputs`` and a model's own terms: :mod:`langground.losses`);
- ``predict(outputs, i, frame, ctx)``: sample ``i`` of a batch of outputs -> a
  :class:`~langground.types.Prediction` in original pixels;
- ``metrics`` / ``primary_metric``: the evaluator's metric families and the headline number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from langground.types import Prediction, Targets

#: Head names of the built-in tasks (a new task may name new heads; models build those they know).
HEADS = ("box", "mask", "no_target", "answer", "phrase_box", "embedding")


@dataclass(frozen=True)
class Frame:
    """Where sample ``i`` of a batch lives: canvas side, letterbox ``(scale, pad_x, pad_y)``, original
    ``(H, W)``; ``orig = (canvas - pad) / scale``."""

    canvas: int
    transform: tuple[float, float, float]
    size: tuple[int, int]


class Task:
    """Base class of every task; subclasses set the class attributes and implement the two methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    heads: ClassVar[frozenset[str]] = frozenset()
    #: metric families (``langground.engine.metrics``) evaluated for a model trained on this task
    metrics: ClassVar[tuple[str, ...]] = ()
    #: those of :attr:`metrics` that score another task's output derived from this task's own (a RES
    #: model's boxes are its masks' bounding boxes); reports name them as such
    derived_metrics: ClassVar[tuple[str, ...]] = ()
    primary_metric: ClassVar[str] = ""
    #: default weights of the terms ``loss_terms`` returns (``loss_giou`` -> ``giou``)
    loss_weights: ClassVar[Mapping[str, float]] = {}
    #: loss options (not weights) and their defaults, e.g. ``objectness``
    loss_options: ClassVar[Mapping[str, Any]] = {}
    #: training targets need the referents' masks
    needs_masks: ClassVar[bool] = False
    #: the model needs an answer vocabulary (``num_answers``) built from the training split
    needs_answers: ClassVar[bool] = False
    #: batches carry phrase queries (``Batch.phrases``) and ``Targets.phrase_boxes``
    uses_phrases: ClassVar[bool] = False
    #: evaluation decodes ``pred_masks`` (box tasks skip the cost)
    decodes_masks: ClassVar[bool] = False
    #: what one record of a loader is for this task: ``expression`` (a referring expression), ``question``
    #: or ``caption`` (a whole caption: its phrases, or the text of an image-text pair)
    record_unit: ClassVar[str] = "expression"

    def loss_terms(self, outputs: Mapping[str, Any], targets: Targets, **options: Any) -> dict[str, Tensor]:
        """Unweighted ``loss_<name>`` terms of one prediction dict (the final layer's or an aux layer's)."""
        raise NotImplementedError

    def predict(self, outputs: Mapping[str, Any], i: int, frame: Frame, ctx: Any) -> Prediction:
        """Sample ``i`` of ``outputs`` (detached float CPU tensors) in original pixels.

        ``ctx`` is a :class:`langground.tasks.DecodeContext` (thresholds, answer names, mask decoding).
        """
        raise NotImplementedError

    def output_scorer(self, metrics_config: Any) -> Any | None:
        """A scorer of raw outputs for tasks scored over a whole split rather than per prediction
        (retrieval: ``update(records, outputs, image_index)``, ``state_dict``, ``merge``, ``compute``);
        ``None``: the evaluator scores :meth:`predict`'s predictions with the :attr:`metrics` families."""
        return None

    def resolve_loss_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``options``; raises ValueError for an unknown option."""
        unknown = set(options) - set(self.loss_options)
        if unknown:
            valid = ", ".join(sorted(self.loss_options)) or "none"
            raise ValueError(
                f"unknown loss option(s) {', '.join(sorted(unknown))} for task {self.name!r}; valid: {valid}"
            )
        return {**self.loss_options, **options}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
