"""One evaluator for every task: feed it (record, prediction) pairs, read flat metric keys.

Typical use in the engine::

    ev = Evaluator(task.metrics, metrics_config_for(config.eval, records.protocol))  # e.g. ["gres"]
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
Metric families come from :mod:`langground.engine.metrics.registry` (``register_metric``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from rich.table import Table

from langground.engine.metrics.base import Metric, MetricAccumulator
from langground.engine.metrics.registry import build_metric, canonical_metric_name, list_metrics
from langground.engine.metrics.retrieval import RetrievalMetric
from langground.engine.metrics.settings import MetricsConfig
from langground.types import GroundingRecord, Prediction

__all__ = ["PRIMARY_METRIC", "Evaluator", "MetricsConfig", "format_table", "metric_rows"]

#: The headline number per built-in family (back-compat; ``langground.tasks`` objects carry their own).
PRIMARY_METRIC: dict[str, str] = {
    "rec": "rec/prec@0.5",
    "res": "res/oiou",
    "gres": "gres/ciou",
    "gref": "grec/prec@f1",
    "vqa": "vqa/acc",
    "retrieval": "retrieval/rsum",
}


class Evaluator:
    """Accumulates the metrics of several families over a split.

    Args:
        tasks: metric family names: ``"rec"``, ``"res"``, ``"gres"``, ``"gref"`` (alias ``"grec"``),
            ``"vqa"``, ``"retrieval"``, or any family added with ``register_metric``.
        config: thresholds and conventions, :class:`MetricsConfig` defaults when omitted.

    Each per-sample family scores the records it applies to and skips the others (REC skips
    no-target and VQA records, mask and GREC metrics skip VQA records, VQA skips records without an
    answer), so one evaluator can run over a mixed split. Retrieval is fed a similarity matrix
    through :meth:`update_retrieval` instead.
    """

    def __init__(self, tasks: Iterable[str], config: MetricsConfig | None = None) -> None:
        self.config = config or MetricsConfig()
        names: list[str] = []
        for t in tasks:
            t = canonical_metric_name(t)
            if t not in names:
                names.append(t)
        if not names:
            raise ValueError(f"Evaluator needs at least one metric family ({', '.join(list_metrics())})")
        self.metrics: dict[str, Metric] = {t: build_metric(t, self.config) for t in names}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.metrics)

    def update(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None = None
    ) -> None:
        """Score one expression with every per-sample family. ``gt_mask`` is the ``(H, W)``
        ground-truth union mask in original pixels; when omitted, mask families decode it once with
        ``record.load_mask()``."""
        samples = [m for m in self.metrics.values() if isinstance(m, MetricAccumulator)]
        if (
            gt_mask is None
            and record.answer is None
            and not record.answers
            and not record.no_target
            and any(m.needs_gt_mask for m in samples)
        ):
            gt_mask = record.load_mask()
        for metric in samples:
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

    def update_retrieval(self, similarity: np.ndarray, text_image: Sequence[int | Sequence[int]]) -> None:
        """Feed ``(texts, images)`` similarities and each text's ground-truth image(s) to every
        retrieval family (:meth:`RetrievalMetric.update`)."""
        targets = [m for m in self.metrics.values() if isinstance(m, RetrievalMetric)]
        if not targets:
            raise ValueError(f"update_retrieval: no retrieval metric among {', '.join(self.metrics)}")
        for metric in targets:
            metric.update(similarity, text_image)

    def compute(self) -> dict[str, float]:
        """Flat ``{key: value}`` of every family; ratios are fractions in [0, 1].

        Keys: ``rec/prec@0.5``, ``rec/miou``; ``res/miou``, ``res/oiou``, ``res/pr@0.5`` ... ``@0.9``;
        ``gres/ciou``, ``gres/giou``, ``gres/n_acc``, ``gres/t_acc``, ``gres/pr@0.7`` ...;
        ``grec/prec@f1``, ``grec/n_acc``, ``grec/t_acc``, ``grec/f1``; ``vqa/acc``;
        ``retrieval/r@{1,5,10}_{t2i,i2t}``, ``retrieval/rsum``; per family ``<prefix>/count``; per
        record family ``<key>/family/<family>`` and ``<prefix>/count/family/<family>``. A metric
        with nothing to average over is left out (never NaN); ``count`` is always there.
        docs/metrics.md defines each.
        """
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            out.update(metric.compute())
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def state_dict(self) -> dict[str, Any]:
        """Raw sums and counts per family (plain Python, picklable, JSON-able) for :meth:`merge`."""
        return {task: metric.state_dict() for task, metric in self.metrics.items()}

    def merge(self, other: Mapping[str, Any] | Evaluator) -> None:
        """Add another evaluator (or its :meth:`state_dict`, e.g. from another rank) into this one.

        The result is exactly -- bit for bit -- what one evaluator fed with both sets would give.
        Families must match; settings must match.
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


#: What a metric key means where papers name the same number differently (shown under tables).
METRIC_NOTES = {
    "res/oiou": "res/oiou = cumulative IoU ΣI/ΣU over the split (= DMN's \"mIoU\", ReLA's cIoU)",
    "res/miou": "res/miou = mean of the per-expression IoUs",
}


def metric_notes(metrics: Mapping[str, float]) -> list[str]:
    """The :data:`METRIC_NOTES` of the keys present in ``metrics``."""
    return [note for key, note in METRIC_NOTES.items() if key in metrics]


def format_table(metrics: Mapping[str, float], title: str | None = "metrics") -> Table:
    """A ``rich`` table of :func:`metric_rows` (ratios in %), captioned with :func:`metric_notes`."""
    table = Table(title=title, caption="; ".join(metric_notes(metrics)) or None)
    table.add_column("task", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in metric_rows(metrics):
        table.add_row(*row)
    return table
