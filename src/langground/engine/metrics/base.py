"""What every task metric shares: exact running sums, per-family groups, state for distributed merge.

A metric accumulator turns one ``(record, prediction)`` pair into a few raw numbers (counts, pixel
sums, a per-sample IoU), adds them to the running sums of the whole split and of the record's
family, and only divides at :meth:`MetricAccumulator.compute`. Because the state is nothing but sums,
``merge`` of the ranks' states gives the single-process result. Integer sums are Python ints;
float sums are kept as Shewchuk's non-overlapping partials (the algorithm behind ``math.fsum``), so
a sum is the correctly rounded sum of all its terms whatever the order or split: merging two halves
equals the whole *bit for bit*, not just up to rounding.

Empty-set convention, everywhere: a metric whose denominator is 0 (no sample of that kind) is left
out of :meth:`compute` -- never NaN, never a made-up 0. ``<prefix>/count`` is always reported, so a
task that saw no sample reports only ``{"<prefix>/count": 0.0}``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from langground.types import GroundingRecord, Prediction

__all__ = ["ExactSum", "Metric", "MetricAccumulator", "SampleStats", "at_least"]

#: Raw per-sample numbers: ints (counts, pixels) stay exact ints, floats go to an :class:`ExactSum`.
SampleStats = dict[str, int | float]


class ExactSum:
    """A float sum without rounding error (Shewchuk 1997, as in Python's ``math.fsum`` recipe).

    ``partials`` are non-overlapping floats whose exact sum is the exact sum of every added term;
    :attr:`value` rounds it once. Adding the partials of another ExactSum is exact too.
    """

    __slots__ = ("partials",)

    def __init__(self, partials: list[float] | None = None) -> None:
        self.partials: list[float] = []
        for p in partials or ():
            self.add(p)

    def add(self, x: float) -> None:
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"cannot accumulate a non-finite value ({x})")
        kept = 0
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)  # the rounding error of hi, exactly (Knuth's two-sum, |x| >= |y|)
            if lo:
                self.partials[kept] = lo
                kept += 1
            x = hi
        self.partials[kept:] = [x]

    def merge(self, other: ExactSum) -> None:
        for p in other.partials:
            self.add(p)

    @property
    def value(self) -> float:
        return math.fsum(self.partials)


def at_least(value: Any, threshold: float) -> bool:
    """``value >= threshold`` in the value's own precision: a float32 score 0.7 passes a 0.7 threshold
    (in float64 it is 0.69999999 and would not)."""
    if isinstance(value, np.floating | np.ndarray):
        return bool(np.asarray(value) >= np.asarray(threshold, dtype=np.asarray(value).dtype))
    return float(value) >= threshold


def _as_number(v: Any) -> int | float:
    if isinstance(v, bool | np.bool_):
        return int(v)
    if isinstance(v, int | np.integer):
        return int(v)
    return float(v)


def _accumulate(sums: dict[str, int | ExactSum], key: str, v: int | float | ExactSum) -> None:
    """``sums[key] += v``: ints stay exact ints, anything with a float becomes an ExactSum."""
    cur = sums.get(key)
    if isinstance(v, int) and (cur is None or isinstance(cur, int)):
        sums[key] = (cur or 0) + v
        return
    if not isinstance(cur, ExactSum):
        cur = ExactSum([] if cur is None else [float(cur)])
        sums[key] = cur
    if isinstance(v, ExactSum):
        cur.merge(v)
    else:
        cur.add(v)


class Metric(ABC):
    """What the :class:`~langground.engine.metrics.Evaluator` needs of any metric family.

    :class:`MetricAccumulator` (one ``(record, prediction)`` pair at a time) is one kind; a family fed
    otherwise (e.g. :class:`~langground.engine.metrics.retrieval.RetrievalMetric`, fed a similarity
    matrix) implements these five and its own ``update``. ``merge`` of the ranks' ``state_dict`` must
    give exactly the single-process ``compute``.
    """

    #: the key prefix, e.g. ``"rec"``
    prefix: ClassVar[str]
    #: whether :meth:`Evaluator.update` should decode the ground-truth mask for this family
    needs_gt_mask: ClassVar[bool] = False

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Flat ``{"<prefix>/<metric>": value}``; a metric with an empty denominator is left out."""

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`compute` needs, as plain picklable (and JSON-able) Python."""

    @abstractmethod
    def merge(self, other_state: Mapping[str, Any]) -> None:
        """Add another instance's :meth:`state_dict` (e.g. from another rank) into this one."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self.merge(state)


class MetricAccumulator(Metric):
    """Running sums of one task's metric over a split, overall and per ``record.family``.

    Subclasses define :meth:`sample_stats` (one sample -> raw numbers, or ``None`` when the record
    is not for this task) and :meth:`summarize` (sums -> metric values, leaving out any whose
    denominator is 0).

    Keys of :meth:`compute`: ``"<prefix>/<metric>"`` over the split, ``"<prefix>/count"``, and per
    family ``"<prefix>/<metric>/family/<family>"`` for the metrics in :attr:`family_metrics` plus
    ``"<prefix>/count/family/<family>"``. All ratios are fractions in ``[0, 1]`` (tables show %).
    """

    #: metrics also reported per family (a subclass may set it per instance, from its thresholds)
    family_metrics: tuple[str, ...] = ()

    def __init__(self, by_family: bool = True) -> None:
        self.by_family = by_family
        self._groups: dict[str, dict[str, int | ExactSum]] = {}

    # -- to implement ------------------------------------------------------------------------------

    @abstractmethod
    def sample_stats(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None
    ) -> SampleStats | None:
        """Raw numbers of one sample (always including ``"count": 1``), or None to skip the record."""

    @abstractmethod
    def summarize(self, sums: Mapping[str, int | float]) -> dict[str, float]:
        """Metric values (names without prefix) from the sums of one group; omit 0-denominator ones."""

    def config(self) -> dict[str, Any]:
        """Settings that change the numbers (JSON-able: lists, not tuples); states only merge between
        equal configs."""
        return {}

    def _full_config(self) -> dict[str, Any]:
        return {**self.config(), "by_family": self.by_family}

    # -- accumulation ----------------------------------------------------------------------------

    def update(
        self, record: GroundingRecord, prediction: Prediction, gt_mask: np.ndarray | None = None
    ) -> bool:
        """Add one sample; returns False when the record is not one this task scores (e.g. a VQA
        question for REC), True otherwise."""
        stats = self.sample_stats(record, prediction, gt_mask)
        if stats is None:
            return False
        self._add("", stats)
        if self.by_family and record.family:
            self._add(str(record.family), stats)
        return True

    def _add(self, group: str, stats: SampleStats) -> None:
        sums = self._groups.setdefault(group, {})
        for key, raw in stats.items():
            _accumulate(sums, key, _as_number(raw))

    def reset(self) -> None:
        self._groups.clear()

    @property
    def count(self) -> int:
        """Samples scored so far."""
        return int(self._values("").get("count", 0))

    def _values(self, group: str) -> dict[str, int | float]:
        sums = self._groups.get(group, {})
        return {k: (v.value if isinstance(v, ExactSum) else v) for k, v in sums.items()}

    def compute(self) -> dict[str, float]:
        """Flat ``{key: value}``; see the class docstring for the keys and the empty-set rule."""
        p = self.prefix
        values = self._values("")
        out = {f"{p}/count": float(values.get("count", 0))}
        if values.get("count", 0):
            out.update({f"{p}/{k}": float(v) for k, v in self.summarize(values).items()})
        for family in sorted(g for g in self._groups if g):
            fam_values = self._values(family)
            fam_metrics = self.summarize(fam_values)
            out[f"{p}/count/family/{family}"] = float(fam_values.get("count", 0))
            out.update(
                {
                    f"{p}/{k}/family/{family}": float(fam_metrics[k])
                    for k in self.family_metrics
                    if k in fam_metrics
                }
            )
        return out

    # -- distributed ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Raw sums as plain Python (ints, lists of float partials): picklable and JSON-able."""
        return {
            "prefix": self.prefix,
            "config": self._full_config(),
            "groups": {
                g: {k: (list(v.partials) if isinstance(v, ExactSum) else v) for k, v in sums.items()}
                for g, sums in self._groups.items()
            },
        }

    def merge(self, other_state: Mapping[str, Any]) -> None:
        """Add another accumulator's :meth:`state_dict` (e.g. from another rank) into this one."""
        if other_state.get("prefix") != self.prefix:
            raise ValueError(
                f"cannot merge a {other_state.get('prefix')!r} metric state into {self.prefix!r}"
            )
        if dict(other_state.get("config", {})) != self._full_config():
            raise ValueError(
                f"{self.prefix}: cannot merge states computed with different settings: "
                f"{other_state.get('config')} vs {self._full_config()}"
            )
        for group, sums in other_state.get("groups", {}).items():
            mine = self._groups.setdefault(group, {})
            for key, v in sums.items():
                _accumulate(
                    mine, key, ExactSum([float(x) for x in v]) if isinstance(v, list) else _as_number(v)
                )
