"""Model outputs (canvas frame, logits) -> :class:`langground.types.Prediction` in ORIGINAL image pixels.

Evaluation and the :class:`~langground.inference.Grounder` share this one mapping, so a metric measured by
``langground eval`` is a metric of exactly what ``langground predict`` shows. What a prediction carries is
the task's business (``Task.predict`` in :mod:`langground.tasks`); this module batches it.

The inverse letterbox is ``orig = (canvas - pad) / scale`` per sample (see ``langground.types.Batch``).
The canvas size ``S`` is not stored in the outputs but follows from the letterbox itself: the long side
of the original image fills the canvas, so ``S = scale * max(H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from langground.tasks import DecodeContext, Frame, PostprocessConfig, Task, get_task
from langground.tasks.decode import canvas_size_of, unletterbox_map
from langground.types import Prediction

__all__ = ["PostprocessConfig", "canvas_size_of", "postprocess", "unletterbox_map"]


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().float().cpu()
    if isinstance(value, Mapping):
        return {k: _detached(v) for k, v in value.items()}
    return value


def postprocess(
    outputs: Mapping[str, Any],
    transforms: Sequence[Sequence[float]],
    image_sizes: Sequence[Sequence[int]],
    task: str | Task,
    *,
    canvas_size: int | None = None,
    answer_vocab: Sequence[str] | Mapping[int, str] | None = None,
    config: PostprocessConfig | None = None,
    with_masks: bool = True,
) -> list[Prediction]:
    """Turn a batch of model outputs into one :class:`Prediction` per expression, in original pixels.

    Args:
        outputs: the model's dict (any subset of the contract's ``pred_*`` keys).
        transforms: per expression ``(scale, pad_x, pad_y)`` with ``orig = (canvas - pad) / scale``.
        image_sizes: per expression ``(H, W)`` of the original image.
        task: a task name or object; decides what a prediction carries (e.g. ``rec``: the single
            ``pred_boxes`` box; ``res``: the mask and its bounding box; ``gref``: the ``pred_box_set`` boxes
            above ``box_set_threshold`` after NMS, none for a no-target expression; ``vqa``: the answer).
        canvas_size: side of the model input; inferred from the letterbox when omitted.
        answer_vocab: answer id -> string for VQA (ids are printed as strings without it).
        config: thresholds (defaults: :class:`PostprocessConfig`).
        with_masks: decode ``pred_masks`` when present (evaluation of box tasks may skip the cost).

    Returns:
        ``len(transforms)`` predictions; ``scores`` are probabilities.
    """
    task = get_task(task)
    batch = len(transforms)
    if len(image_sizes) != batch:
        raise ValueError(f"got {batch} transforms but {len(image_sizes)} image sizes")
    ctx = DecodeContext(config or PostprocessConfig(), answer_vocab, with_masks)
    out = {k: _detached(v) for k, v in outputs.items() if k not in ("aux_outputs", "losses")}
    predictions = []
    for i in range(batch):
        size = (int(image_sizes[i][0]), int(image_sizes[i][1]))
        transform = tuple(float(v) for v in transforms[i])
        canvas = canvas_size if canvas_size is not None else canvas_size_of(transform, size)
        predictions.append(task.predict(out, i, Frame(canvas, transform, size), ctx))  # type: ignore[arg-type]
    return predictions
