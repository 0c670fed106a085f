"""Every metric the papers report, with their conventions written down (docs/metrics.md).

=============  ==============================================================  =======================
family         keys                                                            definition
=============  ==============================================================  =======================
``rec``        ``rec/prec@0.5``, ``rec/miou``                                  :class:`RECMetric`
``res``        ``res/miou``, ``res/oiou``, ``res/pr@0.5`` ... ``@0.9``         :class:`RESMetric`
``gres``       ``gres/ciou``, ``gres/giou``, ``gres/n_acc``, ``gres/t_acc``    :class:`GRESMetric` (ReLA)
``gref``       ``grec/prec@f1``, ``grec/n_acc``, ``grec/t_acc``, ``grec/f1``   :class:`GRECMetric`
``vqa``        ``vqa/acc``                                                     :class:`VQAMetric`
``retrieval``  ``retrieval/r@{1,5,10}_{t2i,i2t}``, ``retrieval/rsum``          :class:`RetrievalMetric`
=============  ==============================================================  =======================

Plus ``<prefix>/count`` and per ``record.family`` ``<key>/family/<family>``. Ratios are fractions
in [0, 1]; :func:`format_table` shows percentages. Boxes and masks are compared in ORIGINAL image
pixels (``xyxy``, no +1). A metric with an empty denominator is omitted, never NaN.

:class:`Evaluator` runs several families at once and has ``state_dict()`` / ``merge()`` so that a
distributed evaluation reduces to exactly the single-process numbers. New families:
:func:`register_metric`. Settings per benchmark: :func:`metrics_config_for`.
"""

from langground.engine.metrics.base import ExactSum, Metric, MetricAccumulator
from langground.engine.metrics.detection import (
    GREC_MATCHING,
    GRECMetric,
    RECMetric,
    greedy_match,
    one_to_one_match,
)
from langground.engine.metrics.evaluator import PRIMARY_METRIC, Evaluator, format_table, metric_rows
from langground.engine.metrics.protocol import metrics_config_for
from langground.engine.metrics.registry import (
    build_metric,
    canonical_metric_name,
    list_metrics,
    register_metric,
)
from langground.engine.metrics.retrieval import RetrievalMetric, retrieval_ranks
from langground.engine.metrics.segmentation import (
    NO_TARGET_RULES,
    GRESMetric,
    RESMetric,
    mask_inter_union,
    predicts_no_target,
)
from langground.engine.metrics.settings import MetricsConfig
from langground.engine.metrics.vqa import VQAMetric, normalize_answer, normalize_vqa2, vqa_accuracy

__all__ = [
    "GREC_MATCHING",
    "NO_TARGET_RULES",
    "PRIMARY_METRIC",
    "Evaluator",
    "ExactSum",
    "GRECMetric",
    "GRESMetric",
    "Metric",
    "MetricAccumulator",
    "MetricsConfig",
    "RECMetric",
    "RESMetric",
    "RetrievalMetric",
    "VQAMetric",
    "build_metric",
    "canonical_metric_name",
    "format_table",
    "greedy_match",
    "list_metrics",
    "mask_inter_union",
    "metric_rows",
    "metrics_config_for",
    "normalize_answer",
    "normalize_vqa2",
    "one_to_one_match",
    "predicts_no_target",
    "register_metric",
    "retrieval_ranks",
    "vqa_accuracy",
]
