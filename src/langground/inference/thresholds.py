"""Threshold overrides for a checkpoint's postprocessing, checked against what its task predicts."""

from __future__ import annotations

import dataclasses
from typing import Any

from langground.errors import LanggroundError
from langground.postprocess import PostprocessConfig


def override_thresholds(
    base: PostprocessConfig,
    spec: Any,
    *,
    box_threshold: float | None = None,
    no_target_threshold: float | None = None,
) -> PostprocessConfig:
    """``base`` with these overrides (None: keep), validated against the task ``spec`` (its ``heads``).

    Raises:
        LanggroundError: a value outside [0, 1], or a threshold the task does not use (a box-set
            threshold for a one-box model, a no-target threshold for a model without that head).
    """
    heads = spec.heads
    changes: dict[str, float] = {}
    for label, value, key, applies, what in (
        ("box threshold", box_threshold, "box_set_threshold", {"box", "no_target"} <= heads,
         "a set of boxes (generalized REC)"),
        ("no-target threshold", no_target_threshold, "no_target_threshold", "no_target" in heads,
         "a no-target probability (generalized REC / RES)"),
    ):  # fmt: skip
        if value is None:
            continue
        if not 0.0 <= float(value) <= 1.0:
            raise LanggroundError(f"{label} {value}: expected a probability in [0, 1]")
        if not applies:
            raise LanggroundError(
                f"{label} {value}: applies to models that predict {what}; this checkpoint's task "
                f"{spec.name!r} does not"
            )
        changes[key] = float(value)
    return dataclasses.replace(base, **changes)
