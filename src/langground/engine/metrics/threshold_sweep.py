"""Picking the mask threshold on a split, as DMN does (§4.2: "using optimal thresholds from the training or
validation splits"): the RES metrics at every threshold of a grid from ONE pass of the model.

The release's ``evaluate`` (``dmn_pytorch/train.py``) thresholds the sigmoid map at 0, 0.025, ..., 0.95
and reports the threshold of the largest cumulative IoU ``ΣI / ΣU`` (our ``res/oiou``, its "mIoU");
:data:`DMN_GRID` is that grid. Counts per threshold come from each expression's probability map in
original pixels (the same decoding as ``postprocess``), with ``pixel >= threshold`` as foreground (the
release: ``>``; equal on a continuous map). Definitions are :class:`RESMetric`'s (both empty: IoU 1).
Apply the picked threshold to the other splits with ``postprocess.mask_threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from langground.types import GroundingRecord

__all__ = ["DMN_GRID", "MaskThresholdSweep", "sweep_mask_threshold"]

DMN_GRID: tuple[float, ...] = tuple(round(0.025 * i, 3) for i in range(39))  # 0 ... 0.95


class MaskThresholdSweep:
    """Accumulates ``res`` counts at every threshold; :meth:`compute` gives each and the best."""

    def __init__(
        self,
        thresholds: Sequence[float] = DMN_GRID,
        iou_thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
    ) -> None:
        self.thresholds = np.asarray(sorted(float(t) for t in thresholds), np.float64)
        if self.thresholds.size == 0 or self.thresholds.min() < 0 or self.thresholds.max() > 1:
            raise ValueError(f"mask thresholds must be probabilities in [0, 1], got {list(thresholds)}")
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        n = self.thresholds.size
        self.inter, self.union, self.iou = np.zeros(n), np.zeros(n), np.zeros(n)
        self.hits = np.zeros((len(self.iou_thresholds), n))
        self.count = 0

    def update(self, prob: np.ndarray, gt: np.ndarray | None) -> None:
        """One expression: ``prob`` ``(H, W)`` foreground probability, ``gt`` its mask (None: empty)."""
        g = np.zeros(prob.shape, bool) if gt is None else gt.astype(bool)
        if g.shape != prob.shape:
            raise ValueError(f"mask shapes differ: probability {prob.shape} vs ground truth {g.shape}")
        # pixels at or above each threshold, overall and inside the ground truth
        order = np.sort(prob.ravel())
        pred = order.size - np.searchsorted(order, self.thresholds, side="left")
        inside = np.sort(prob[g])
        inter = inside.size - np.searchsorted(inside, self.thresholds, side="left")
        union = pred + int(g.sum()) - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        self.inter += inter
        self.union += union
        self.iou += iou
        for k, t in enumerate(self.iou_thresholds):
            self.hits[k] += iou >= t
        self.count += 1

    def compute(self) -> dict[str, Any]:
        """``{"thresholds", "oiou", "miou", "best_threshold", "best": {res/... metrics}}``."""
        n = max(self.count, 1)
        oiou = np.where(self.union > 0, self.inter / np.maximum(self.union, 1), 0.0)
        best = int(np.argmax(oiou))  # the first of ties: the lowest threshold, as torch.max in the release
        metrics = {
            "res/oiou": float(oiou[best]),
            "res/miou": float(self.iou[best] / n),
            **{f"res/pr@{t:g}": float(self.hits[k, best] / n) for k, t in enumerate(self.iou_thresholds)},
            "res/count": float(self.count),
        }
        return {
            "thresholds": self.thresholds.tolist(),
            "oiou": oiou.tolist(),
            "miou": (self.iou / n).tolist(),
            "best_threshold": float(self.thresholds[best]),
            "best": metrics,
        }


def sweep_mask_threshold(
    model: Any,
    records: Sequence[GroundingRecord],
    config: Any,
    vocab: Any,
    *,
    device: Any,
    thresholds: Sequence[float] = DMN_GRID,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Run ``model`` once over ``records`` (one process) and sweep the mask threshold (module docstring)."""
    import torch

    from langground.engine.builders import Precision, build_dataset, make_loader
    from langground.engine.evaluate import iterate_outputs
    from langground.tasks.base import Frame
    from langground.tasks.decode import DecodeContext, canvas_size_of, decode_mask

    run = config.run
    loader = make_loader(
        build_dataset(records, config, None, train=False), vocab, config, run,
        batch_size=batch_size or run.eval_batch_size or 2 * run.batch_size,
    )  # fmt: skip
    sweep = MaskThresholdSweep(thresholds)
    ctx = DecodeContext(config.postprocess)
    for batch, outputs, batch_records in iterate_outputs(model, loader, device, Precision(None, False)):
        out = {"pred_masks": outputs["pred_masks"].detach().float().cpu()}
        for i, record in enumerate(batch_records):
            if record.answer is not None or record.answers:
                continue
            size = (int(record.image_size[0]), int(record.image_size[1]))
            transform = tuple(float(v) for v in batch.transforms[i])
            canvas = config.transforms.input_size or canvas_size_of(transform, size)
            prob = decode_mask(out, i, Frame(canvas, transform, size), ctx)
            assert prob is not None
            with torch.no_grad():
                sweep.update(prob.numpy(), None if record.no_target else record.load_mask())
    return sweep.compute()


def pick_mask_threshold(
    checkpoint: Any,
    data_root: Any,
    split: str = "val",
    *,
    dataset: str | None = None,
    device: str = "auto",
    limit: int | None = None,
) -> dict[str, Any]:
    """The mask threshold with the best oIoU on ``split`` (the paper's protocol: picked on val), from a
    checkpoint or run directory; the :func:`sweep_mask_threshold` result, one pass of the model."""
    import dataclasses

    from langground.engine.builders import open_split
    from langground.engine.checkpoint import load_checkpoint
    from langground.inference.grounder import resolve_device

    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, device=dev)
    data = dataclasses.replace(
        ckpt.config.data, root=str(data_root), **({"dataset": dataset} if dataset else {})
    )
    records = open_split(data, split, limit)
    return sweep_mask_threshold(ckpt.model.to(dev).eval(), records, ckpt.config, ckpt.vocab, device=dev)
