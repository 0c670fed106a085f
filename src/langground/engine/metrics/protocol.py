"""Metric settings per benchmark: from ``config.eval`` and the dataset's protocol, never from postprocess.

The lead's ``langground.engine.evaluate.metrics_config`` calls :func:`metrics_config_for`, so tuning
``postprocess.*`` (a model's decoding) cannot move a benchmark's number; only ``eval.*`` can, and a
preset that departs from a benchmark's released protocol says so there (docs/metrics.md).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from langground.engine.metrics.settings import MetricsConfig

if TYPE_CHECKING:
    from langground.config import EvalConfig
    from langground.data.base import DatasetProtocol

__all__ = ["metrics_config_for"]

#: ``DatasetProtocol.box_match`` -> REC's box matching (``single``/``all``: REC sees one box, GREC matches).
_REC_BOX_MATCH = {"any": "any"}


def metrics_config_for(
    eval_cfg: EvalConfig | None, protocol: DatasetProtocol | None = None, **overrides: Any
) -> MetricsConfig:
    """The :class:`MetricsConfig` of a benchmark.

    Args:
        eval_cfg: ``config.eval`` (``gres_no_target``, ``min_mask_pixels``, ``grec_score_threshold``,
            ``grec_iou_threshold``, ``grec_matching``, ``box_match``); ``None`` for the defaults.
        protocol: the dataset's protocol (``records.protocol``); its ``box_match`` decides REC's
            matching of several ground-truth boxes (``any``: Flickr30k's separate protocol, else
            ``merged``) unless ``eval_cfg.box_match`` is set.
        overrides: any other :class:`MetricsConfig` field (thresholds, ``by_family``), e.g. for tests.

    Raises ``ValueError`` naming the field on a value outside its choices.
    """
    fields: dict[str, Any] = {}
    if eval_cfg is not None:
        fields.update(
            gres_no_target=eval_cfg.gres_no_target,
            min_mask_pixels=int(eval_cfg.min_mask_pixels),
            grec_score_threshold=float(eval_cfg.grec_score_threshold),
            grec_iou_threshold=float(eval_cfg.grec_iou_threshold),
            grec_matching=eval_cfg.grec_matching,
        )
    box_match = getattr(eval_cfg, "box_match", None)
    if box_match is None:
        box_match = _REC_BOX_MATCH.get(str(getattr(protocol, "box_match", "")), "merged")
    fields["rec_box_match"] = box_match
    unknown = set(overrides) - {f.name for f in dataclasses.fields(MetricsConfig)}
    if unknown:
        raise ValueError(f"metrics_config_for: unknown MetricsConfig field(s) {sorted(unknown)}")
    fields.update(overrides)
    return MetricsConfig(**fields)
