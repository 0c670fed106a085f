"""The settings of every metric family, in one dataclass (built per benchmark by :mod:`.protocol`)."""

from __future__ import annotations

from dataclasses import dataclass

from langground.engine.metrics.detection import BOX_MATCH, GREC_MATCHING
from langground.engine.metrics.segmentation import NO_TARGET_RULES

__all__ = ["MetricsConfig"]


@dataclass
class MetricsConfig:
    """Settings of every metric; the defaults are the benchmarks' released protocols (docs/metrics.md).

    Build it with :func:`langground.engine.metrics.metrics_config_for` from ``config.eval`` and the
    dataset protocol, never from postprocess settings.

    Attributes:
        rec_thresholds: IoU thresholds of ``rec/prec@t`` (REC papers report 0.5).
        res_thresholds: IoU thresholds of ``res/pr@t`` (DMN: 0.5 ... 0.9).
        gres_thresholds: IoU thresholds of ``gres/pr@t`` over target samples (ReLA: 0.7, 0.8, 0.9).
        gres_no_target: how GRES decides "no target": ``head`` (no-target probability >=
            ``no_target_threshold``; ReLA's released evaluator) or ``min_pixels`` (a mask under
            ``min_mask_pixels`` pixels, or the head: LaConvNet Table 6).
        no_target_threshold: the head's probability at which a prediction says "no target" (0.5:
            ReLA's argmax of two classes).
        min_mask_pixels: the ``min_pixels`` rule's pixel count (LaConvNet Table 6: 50).
        grec_score_threshold: GREC keeps predicted boxes with ``score >= this`` (gRefCOCO script: 0.7).
        grec_iou_threshold: GREC matches a box to a referent at (G)IoU ``>= this`` (0.5).
        grec_matching: ``benchmark`` (the gRefCOCO script: greedy on GIoU) or ``maximum`` (a maximum
            one-to-one matching on IoU).
        by_family: also report every task's main metrics per ``record.family``.
        rec_box_match: REC with several ground-truth boxes: ``merged`` (their enclosing box) or ``any``
            (the best one; Flickr30k's separate protocol).
        retrieval_ks: the K of ``retrieval/r@K_t2i`` and ``r@K_i2t`` (1, 5, 10).
    """

    rec_thresholds: tuple[float, ...] = (0.5,)
    res_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    gres_thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)
    gres_no_target: str = "head"
    no_target_threshold: float = 0.5
    min_mask_pixels: int = 50
    grec_score_threshold: float = 0.7
    grec_iou_threshold: float = 0.5
    grec_matching: str = "benchmark"
    by_family: bool = True
    rec_box_match: str = "merged"
    retrieval_ks: tuple[int, ...] = (1, 5, 10)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("gres_no_target", self.gres_no_target, NO_TARGET_RULES),
            ("grec_matching", self.grec_matching, GREC_MATCHING),
            ("rec_box_match", self.rec_box_match, BOX_MATCH),
        ):
            if value not in allowed:
                raise ValueError(f"MetricsConfig.{name}={value!r}: expected one of {', '.join(allowed)}")
        if self.min_mask_pixels < 0:
            raise ValueError(f"MetricsConfig.min_mask_pixels={self.min_mask_pixels}: expected >= 0")
