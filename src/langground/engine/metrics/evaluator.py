"""One evaluator for every task: feed it (record, prediction) pairs, read flat metric keys.

Typical use in the engine::

    ev = Evaluator(tasks)  # e.g. ["rec"], ["gres", "gref"]
    for batch in loader:
        for record, pred in zip(batch.records, postprocess(outputs, batch)):
            ev.update(record, pred)
    # distributed: gather the per-rank states and merge them -- the result equals one process's
    states = [None] * world_size
    torch.distributed.all_gather_object(states, ev.state_dict())
    total = Evaluator(tasks)
    for s in states:
        total.merge(s)
    console.print(format_table(total.compute()))

(A ``DistributedSampler`` pads the last batch with repeated samples; drop those before ``update``.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table

from langground.engine.metrics.base import MetricAccumulator
from langground.engine.metrics.detection import GRECMetric, RECMetric
from langground.engine.metrics.segmentation import GRESMetric, RESMetric
from langground.engine.metrics.vqa import VQAMetric
from langground.types import GroundingRecord, Prediction

__all__ = ["PRIMARY_METRIC", "Evaluator", "MetricsConfig", "format_table", "metric_rows"]

#: The headline number per task (for "best checkpoint" selection and summaries).
PRIMARY_METRIC: dict[str, str] = {
    "rec": "rec/prec@0.5",
    "res": "res/oiou",
    "gres": "gres/ciou",
    "gref": "grec/prec@f1",
    "vqa": "vqa/acc",
}

# Task names of ``langground.types.TASKS``, plus "grec" as an alias of "gref" (the box side of gRefCOCO).
_ALIASES = {"grec": "gref"}
_MASK_TASKS = ("res", "gres")


@dataclass
class MetricsConfig:
    """Settings of every metric; the defaults are the papers' protocols.

    Attributes:
        rec_thresholds: IoU thresholds of ``rec/prec@t`` (REC papers report 0.5).
        res_thresholds: IoU thresholds of ``res/pr@t`` (DMN: 0.5 ... 0.9).
        gres_thresholds: IoU thresholds of ``gres/pr@t`` over target samples (ReLA: 0.7, 0.8, 0.9).
        no_target_threshold: a prediction with ``no_target >= this`` says "no target" (GRES, GREC).
        min_mask_pixels: GRES counts a predicted mask with fewer pixels as empty (1: truly empty;
            LaConvNet Table 6 / ReLA's setting: 50).
        grec_score_threshold: GREC keeps predicted boxes with ``score >= this`` (gRefCOCO: 0.7).
        grec_iou_threshold: GREC matches a box to a referent at ``IoU >= this`` (0.5).
        by_family: also report every task's main metrics per ``record.family``.
        rec_box_match: REC with several ground-truth boxes: ``merged`` (their enclosing box) or ``any``
            (the best one; Flickr30k's separate protocol).
    """

    rec_thresholds: tuple[float, ...] = (0.5,)
    res_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    gres_thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)
    no_target_threshold: float = 0.5
    min_mask_pixels: int = 1
    grec_score_threshold: float = 0.7
    grec_iou_threshold: float = 0.5
    by_family: bool = True
    rec_box_match: str = "merged"


def _build(task: str, cfg: MetricsConfig) -> MetricAccumulator:
    if task == "rec":
        return RECMetric(cfg.rec_thresholds, cfg.by_family, cfg.rec_box_match)
    if task == "res":
        return RESMetric(cfg.res_thresholds, cfg.by_family)
    if task == "gres":
        return GRESMetric(cfg.gres_thresholds, cfg.no_target_threshold, cfg.min_mask_pixels, cfg.by_family)
    if task == "gref":
        return GRECMetric(
            cfg.grec_score_threshold, cfg.grec_iou_threshold, cfg.no_target_threshold, cfg.by_family
        )
    if task == "vqa":
        return VQAMetric(cfg.by_family)
    raise ValueError(f"unknown metric task {task!r}; expected one of rec, res, gres, gref (alias grec), vqa")


class Evaluator:
    """Accumulates the metrics of several tasks over a split.

    Args:
        tasks: any of ``"rec"``, ``"res"``, ``"gres"``, ``"gref"`` (alias ``"grec"``), ``"vqa"``.
        config: thresholds and conventions, :class:`MetricsConfig` defaults when omitted.

    Each task scores the records it applies to and skips the others (REC skips no-target and VQA
    records, mask and GREC metrics skip VQA records, VQA skips records without an answer), so one
    evaluator can run over a mixed split.
    """

    def __init__(self, tasks: Iterable[str], config: MetricsConfig | None = None) -> None:
        self.config = config or MetricsConfig()
        names: list[str] = []
        for t in tasks:
            t = _ALIASES.get(t, t)
            if t not in names:
                names.append(t)
        if not names:
            raise ValueError("Evaluator needs at least one task (rec, res, gres, gref, vqa)")
        self.metrics: dict[str, MetricAccumulator] = {t: _build(t, self.config) for t in names}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.metrics)

    def update(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None = None
    ) -> None:
        """Score one expression. ``gt_mask`` is the ``(H, W)`` ground-truth union mask in original
        pixels; when omitted, mask tasks decode it once with ``record.load_mask()``."""
        if (
            gt_mask is None
            and record.answer is None
            and not record.no_target
            and any(t in self.metrics for t in _MASK_TASKS)
        ):
            gt_mask = record.load_mask()
        for metric in self.metrics.values():
            metric.update(record, prediction, gt_mask)

    def update_many(
        self,
        records: Sequence[GroundingRecord],
        predictions: Sequence[Prediction],
        gt_masks: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """:meth:`update` over a batch."""
        if len(records) != len(predictions) or (gt_masks is not None and len(gt_masks) != len(records)):
            raise ValueError(
                f"update_many: {len(records)} records, {len(predictions)} predictions"
                + ("" if gt_masks is None else f", {len(gt_masks)} masks")
            )
        for i, (record, prediction) in enumerate(zip(records, predictions, strict=True)):
            self.update(record, prediction, None if gt_masks is None else gt_masks[i])

    def compute(self) -> dict[str, float]:
        """Flat ``{key: value}`` of every task; ratios are fractions in [0, 1].

        Keys: ``rec/prec@0.5``, ``rec/miou``; ``res/miou``, ``res/oiou``, ``res/pr@0.5`` ... ``@0.9``;
        ``gres/ciou``, ``gres/giou``, ``gres/n_acc``, ``gres/t_acc``, ``gres/pr@0.7`` ...;
        ``grec/prec@f1``, ``grec/n_acc``, ``grec/t_acc``, ``grec/f1``; ``vqa/acc``; per task
        ``<prefix>/count``; per family ``<key>/family/<family>`` and ``<prefix>/count/family/<family>``.
        A metric with nothing to average over is left out (never NaN); ``count`` is always there.
        """
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            out.update(metric.compute())
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def state_dict(self) -> dict[str, Any]:
        """Raw sums and counts per task (plain Python, picklable, JSON-able) for :meth:`merge`."""
        return {task: metric.state_dict() for task, metric in self.metrics.items()}

    def merge(self, other: Mapping[str, Any] | Evaluator) -> None:
        """Add another evaluator (or its :meth:`state_dict`, e.g. from another rank) into this one.

        The result is exactly -- bit for bit -- what one evaluator fed with both sets would give.
        Tasks must match; settings must match.
        """
        state = other.state_dict() if isinstance(other, Evaluator) else other
        if set(state) != set(self.metrics):
            raise ValueError(
                f"cannot merge metric states of tasks {sorted(state)} into {sorted(self.metrics)}"
            )
        for task, metric in self.metrics.items():
            metric.merge(state[task])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self.merge(state)


# ----------------------------------------------------------------------------- presentation


def _is_count(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 2 and parts[1] == "count"


def metric_rows(metrics: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """``(task, metric, value)`` rows for a table: ratios as percentages with two decimals (the
    papers' convention), counts as integers; sorted by task, then overall before per-family."""

    def order(key: str) -> tuple[str, bool, str, str]:
        head, _, family = key.partition("/family/")
        return (head.split("/")[0], bool(family), family, head)

    rows = []
    for key in sorted(metrics, key=order):
        task, _, name = key.partition("/")
        value = metrics[key]
        rows.append((task, name, f"{int(value)}" if _is_count(key) else f"{100.0 * value:.2f}"))
    return rows


def format_table(metrics: Mapping[str, float], title: str | None = "metrics") -> Table:
    """A ``rich`` table of :func:`metric_rows` (ratios in %)."""
    table = Table(title=title)
    table.add_column("task", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in metric_rows(metrics):
        table.add_row(*row)
    return table
