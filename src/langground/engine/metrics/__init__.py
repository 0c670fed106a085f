"""Every metric the papers report, with their conventions written down.

==========  ==========================================================  ==============================
task        keys                                                        definition
==========  ==========================================================  ==============================
``rec``     ``rec/prec@0.5``, ``rec/miou``                              :class:`RECMetric`
``res``     ``res/miou``, ``res/oiou``, ``res/pr@0.5`` ... ``@0.9``     :class:`RESMetric`
``gres``    ``gres/ciou``, ``gres/giou``, ``gres/n_acc``, ``gres/t_acc``  :class:`GRESMetric` (ReLA)
``gref``    ``grec/prec@f1``, ``grec/n_acc``, ``grec/t_acc``            :class:`GRECMetric`
``vqa``     ``vqa/acc``                                                 :class:`VQAMetric`
==========  ==========================================================  ==============================

Plus ``<prefix>/count`` and per ``record.family`` ``<key>/family/<family>``. Ratios are fractions
in [0, 1]; :func:`format_table` shows percentages. Boxes and masks are compared in ORIGINAL image
pixels (``xyxy``, no +1). A metric with an empty denominator is omitted, never NaN.

:class:`Evaluator` runs several tasks at once and has ``state_dict()`` / ``merge()`` so that a
distributed evaluation reduces to exactly the single-process numbers.
"""

from langground.engine.metrics.base import ExactSum, MetricAccumulator
from langground.engine.metrics.detection import GRECMetric, RECMetric, one_to_one_match
from langground.engine.metrics.evaluator import (
    PRIMARY_METRIC,
    Evaluator,
    MetricsConfig,
    format_table,
    metric_rows,
)
from langground.engine.metrics.segmentation import GRESMetric, RESMetric, mask_inter_union, predicts_no_target
from langground.engine.metrics.vqa import VQAMetric, normalize_answer

__all__ = [
    "PRIMARY_METRIC",
    "Evaluator",
    "ExactSum",
    "GRECMetric",
    "GRESMetric",
    "MetricAccumulator",
    "MetricsConfig",
    "RECMetric",
    "RESMetric",
    "VQAMetric",
    "format_table",
    "mask_inter_union",
    "metric_rows",
    "normalize_answer",
    "one_to_one_match",
    "predicts_no_target",
]
