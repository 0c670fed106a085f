"""Metric families by name: ``name -> builder(MetricsConfig) -> Metric``.

A task names the families it is scored with (``langground.tasks``: ``metrics = ("rec",)``); a new
task with a new kind of metric registers it in its own file::

    from langground.engine.metrics import MetricsConfig, register_metric

    @register_metric("toy")
    def _toy(cfg: MetricsConfig) -> ToyMetric:
        return ToyMetric(by_family=cfg.by_family)

and ``Evaluator(["toy"])`` then works without touching the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from langground.engine.metrics.base import Metric
from langground.engine.metrics.detection import GRECMetric, RECMetric
from langground.engine.metrics.retrieval import RetrievalMetric
from langground.engine.metrics.segmentation import GRESMetric, RESMetric
from langground.engine.metrics.settings import MetricsConfig
from langground.engine.metrics.vqa import VQAMetric

__all__ = ["MetricBuilder", "build_metric", "canonical_metric_name", "list_metrics", "register_metric"]

MetricBuilder = Callable[[MetricsConfig], Metric]

_FAMILIES: dict[str, MetricBuilder] = {}
_ALIASES: dict[str, str] = {}


def register_metric(
    name: str, builder: MetricBuilder | None = None, *, aliases: Iterable[str] = (), replace: bool = False
) -> Callable[[MetricBuilder], MetricBuilder] | MetricBuilder:
    """Register ``builder`` as metric family ``name`` (a decorator when ``builder`` is omitted).

    ``aliases`` are other names for the same family (``grec`` for ``gref``). Registering a taken name
    raises ``ValueError`` unless ``replace=True``.
    """

    def add(fn: MetricBuilder) -> MetricBuilder:
        if not callable(fn):
            raise TypeError(f"metric family {name!r}: the builder must be callable, got {fn!r}")
        for n in (name, *aliases):
            if not replace and (n in _FAMILIES or n in _ALIASES):
                raise ValueError(f"metric family {n!r} is already registered")
        _FAMILIES[name] = fn
        for a in aliases:
            _ALIASES[a] = name
        return fn

    return add if builder is None else add(builder)


def canonical_metric_name(name: str) -> str:
    """``name`` with aliases resolved; raises ``ValueError`` naming the registered families."""
    name = _ALIASES.get(name, name)
    if name not in _FAMILIES:
        aliases = ", ".join(f"{a} -> {n}" for a, n in sorted(_ALIASES.items()))
        raise ValueError(
            f"unknown metric family {name!r}; expected one of {', '.join(list_metrics())}"
            + (f" (aliases: {aliases})" if aliases else "")
        )
    return name


def build_metric(name: str, config: MetricsConfig | None = None) -> Metric:
    """A fresh metric of family ``name`` (or an alias) with ``config``'s settings."""
    return _FAMILIES[canonical_metric_name(name)](config or MetricsConfig())


def list_metrics() -> tuple[str, ...]:
    """The registered family names (without aliases), sorted."""
    return tuple(sorted(_FAMILIES))


# ----------------------------------------------------------------------------- built-in families

register_metric("rec", lambda c: RECMetric(c.rec_thresholds, c.by_family, c.rec_box_match))
register_metric("res", lambda c: RESMetric(c.res_thresholds, c.by_family))
register_metric(
    "gres",
    lambda c: GRESMetric(
        c.gres_thresholds, c.no_target_threshold, c.min_mask_pixels, c.by_family, c.gres_no_target
    ),
)
register_metric(
    "gref",
    lambda c: GRECMetric(c.grec_score_threshold, c.grec_iou_threshold, c.grec_matching, c.by_family),
    aliases=("grec",),
)
register_metric("vqa", lambda c: VQAMetric(c.by_family))
register_metric("retrieval", lambda c: RetrievalMetric(c.retrieval_ks))
