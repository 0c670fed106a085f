"""The criterion: a task's loss terms + per-layer auxiliary predictions + a model's own terms, weighed by
one weight dict.

``build_criterion(task, model=None, **loss)`` returns a :class:`Criterion` whose
``forward(outputs, targets)`` gives every unweighted ``loss_*`` term and ``loss``, their weighted sum:

- the task's terms (``langground.tasks``; e.g. rec: ``loss_giou``, ``loss_l1``, ``loss_obj``);
- for each entry ``j`` of ``outputs["aux_outputs"]`` (DETR-style per-layer predictions), the same task terms
  named ``loss_<term>_<j>``, weighted by ``loss.<term>_<j>`` when set, else by ``loss.<term>``;
- a model's own terms: ``outputs["losses"]`` (``{"loss_mi": tensor}``) and the terms of the model's loss
  modules (``model.build_loss_modules()``: nn.Modules ``(outputs, targets) -> {"loss_x": ...}`` that may
  hold state, e.g. a momentum queue, saved with the trainer state and reduced across ranks), weighted by
  ``loss.<name>`` or the model's ``loss_weights`` default.

``loss`` in the config mixes weights (numbers) and the task's options (``objectness``, ``center_radius``);
an unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from langground.tasks import Task, get_task
from langground.tasks.terms import OBJECTNESS, assign_cells, dice_loss, resize_masks
from langground.types import Targets

_LAYER_SUFFIX = re.compile(r"^(.+)_(\d+)$")


def _weight_key(name: str, weights: Mapping[str, float]) -> str | None:
    """The key of ``weights`` that weighs term ``name``: itself, else the base of a per-layer
    ``<base>_<j>``; ``None`` when neither is there."""
    if name in weights:
        return name
    layer = _LAYER_SUFFIX.match(name)
    return layer.group(1) if layer and layer.group(1) in weights else None


class Criterion(nn.Module):
    """Weighted sum of a task's loss terms, its per-layer repeats and a model's own terms."""

    def __init__(
        self,
        task: Task,
        weights: Mapping[str, float],
        options: Mapping[str, Any] | None = None,
        loss_modules: Mapping[str, nn.Module] | None = None,
    ):
        super().__init__()
        self.task = task
        self.weights = dict(weights)
        self.options = task.resolve_loss_options(options or {})
        self.loss_modules = nn.ModuleDict(dict(loss_modules or {}))

    def extra_repr(self) -> str:
        return f"task={self.task.name!r}, weights={self.weights}, options={self.options}"

    def weight(self, term: str) -> float:
        """Weight of ``loss_<name>``: ``weights[name]``, else, for a per-layer ``<base>_<j>``, ``weights[base]``."""
        name = term[len("loss_") :]
        key = _weight_key(name, self.weights)
        if key is not None:
            return self.weights[key]
        raise ValueError(
            f"no weight for loss term {term!r}: a model's own terms need a default in its `loss_weights` "
            f"(or `loss.{name}` in the config); weights: {', '.join(sorted(self.weights))}"
        )

    def forward(self, outputs: Mapping[str, Any], targets: Targets) -> dict[str, Tensor]:
        losses = dict(self.task.loss_terms(outputs, targets, **self.options))
        for j, layer in enumerate(outputs.get("aux_outputs") or ()):
            for k, v in self.task.loss_terms(layer, targets, **self.options).items():
                losses[f"{k}_{j}"] = v
        for module in self.loss_modules.values():
            losses.update(_checked_terms(module(outputs, targets), type(module).__name__))
        losses.update(_checked_terms(outputs.get("losses") or {}, "outputs['losses']"))
        total = sum(self.weight(k) * v.float() for k, v in losses.items())
        losses["loss"] = total  # type: ignore[assignment]
        return losses


def _checked_terms(terms: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    bad = [k for k in terms if not k.startswith("loss_")]
    if bad:
        raise ValueError(f"{source}: loss terms must be named loss_<name>, got {', '.join(bad)}")
    return dict(terms)


def build_criterion(task: str | Task, model: nn.Module | None = None, **loss: Any) -> Criterion:
    """Criterion for ``task``: default weights (the task's, then ``model.loss_weights``) overridden by the
    numeric entries of ``loss``; its other entries are the task's loss options (e.g. ``objectness="bce"``).

    Raises:
        ValueError: a name that is neither a weight (of the task, the model, or a per-layer ``<term>_<j>``)
            nor a loss option; a weight that is not a number.
    """
    task = get_task(task)
    weights = {**task.loss_weights, **dict(getattr(model, "loss_weights", None) or {})}
    options: dict[str, Any] = {}
    valid = sorted({*weights, *task.loss_options})
    for name, value in loss.items():
        if name in task.loss_options:
            options[name] = value
            continue
        if _weight_key(name, weights) is None:
            raise ValueError(
                f"unknown loss weight or option {name!r} for task {task.name!r}; valid: {', '.join(valid)} "
                "(and <term>_<layer> for per-layer weights)"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"loss weight {name}={value!r}: expected a number")
        weights[name] = float(value)
    if "objectness" in options and options["objectness"] not in OBJECTNESS:
        raise ValueError(
            f"loss objectness={options['objectness']!r}: expected one of {', '.join(OBJECTNESS)}"
        )
    build_modules = getattr(model, "build_loss_modules", None)
    modules = build_modules() if callable(build_modules) else {}
    return Criterion(task, weights, options, modules)


__all__ = ["OBJECTNESS", "Criterion", "assign_cells", "build_criterion", "dice_loss", "resize_masks"]
