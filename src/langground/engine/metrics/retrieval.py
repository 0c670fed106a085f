"""Image-text retrieval: Recall@K in both directions over a split's whole gallery (SLAN Tab. 1-2).

Input is a similarity matrix, not per-sample predictions: rows are the split's texts (captions),
columns its images, and each text names its ground-truth image(s). Feed it in blocks of rows::

    metric = RetrievalMetric()
    for texts in blocks:  # any split of the texts, e.g. one block per rank
        metric.update(text_emb[texts] @ image_emb.T, gt_image_of_text[texts])
    metric.compute()  # {"retrieval/r@1_t2i": ..., "retrieval/rsum": ...}

- text -> image (``r@K_t2i``): a text is right at K when one of its ground-truth images is among the
  K images it scores highest; averaged over texts.
- image -> text (``r@K_i2t``): an image is right at K when any of its captions is among the K texts
  that score highest against it; averaged over the images that have a caption in the split.
- ``rsum``: the sum of the six recalls (a fraction here; tables show x100, the usual 0..600 rsum).

Ties are broken against the query: a wrong item scoring exactly as much as the best right one
ranks ahead of it (rank = number of wrong items scoring ``>=`` the best right one). The released
scripts sort with ``np.argsort`` (ALBEF ``Retrieval.py``, ``itm_eval``), where ties fall in an
unspecified order; ours makes the numbers independent of the order of rows, hence exact under
:meth:`RetrievalMetric.merge`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from langground.engine.metrics.base import Metric

__all__ = ["RetrievalMetric", "retrieval_ranks"]


def retrieval_ranks(similarity: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the best right item, ``(text -> image (T,), image -> text (I,))``.

    ``positives`` is the ``(T, I)`` bool ground-truth pairing. An image without a caption gets rank
    -1 (it is not a query). Ties count against the query (see the module docstring).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    best_t = np.where(pos, sim, -np.inf).max(axis=1, initial=-np.inf)
    rank_t = ((sim >= best_t[:, None]) & ~pos).sum(axis=1)
    best_i = np.where(pos, sim, -np.inf).max(axis=0, initial=-np.inf)
    rank_i = ((sim >= best_i[None, :]) & ~pos).sum(axis=0)
    return rank_t, np.where(pos.any(axis=0), rank_i, -1)


def _encode(rows: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(rows, dtype="<f8").tobytes()).decode("ascii")


def _decode(text: str, num_images: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").reshape(-1, num_images)


class RetrievalMetric(Metric):
    """Recall@K both ways over one gallery; see the module docstring.

    Args:
        ks: the K of ``r@K`` (SLAN / ALBEF: 1, 5, 10).

    The state keeps every row of the similarity matrix (float64, exact) and each text's
    ground-truth images; :meth:`state_dict` is JSON-able (rows as base64 of little-endian float64),
    and merging the states of any split of the rows gives exactly the single-process numbers.
    """

    prefix = "retrieval"

    def __init__(self, ks: Sequence[int] = (1, 5, 10)) -> None:
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"retrieval: K must be positive integers, got {tuple(ks)}")
        self.reset()

    def reset(self) -> None:
        self.num_images: int | None = None
        self._rows: list[np.ndarray] = []
        self._gt: list[tuple[int, ...]] = []

    def update(self, similarity: np.ndarray, text_image: Sequence[int | Sequence[int]]) -> None:
        """Add texts: ``similarity`` ``(T, I)`` scores of T texts against the whole gallery of I images
        (same I, same column order every time), ``text_image[t]`` the gallery index (or indices) of
        text t's ground-truth image(s)."""
        sim = np.asarray(similarity)
        if sim.ndim != 2:
            raise ValueError(f"retrieval: similarity must be a (texts, images) matrix, got shape {sim.shape}")
        if not np.isfinite(sim).all():
            raise ValueError("retrieval: similarity has non-finite values")
        if self.num_images is not None and sim.shape[1] != self.num_images:
            raise ValueError(
                f"retrieval: similarity has {sim.shape[1]} image columns, earlier updates had {self.num_images}"
            )
        if len(text_image) != sim.shape[0]:
            raise ValueError(f"retrieval: {sim.shape[0]} similarity rows but {len(text_image)} ground truths")
        gt = []
        for t, g in enumerate(text_image):
            ids = tuple(int(i) for i in (np.atleast_1d(np.asarray(g)).tolist()))
            if not ids or not all(0 <= i < sim.shape[1] for i in ids):
                raise ValueError(
                    f"retrieval: text {t}: ground-truth image(s) {ids} must be 1+ indices in [0, {sim.shape[1]})"
                )
            gt.append(ids)
        self.num_images = int(sim.shape[1])
        self._rows.append(sim.astype(np.float64))
        self._gt.extend(gt)

    @property
    def count(self) -> int:
        """Texts scored so far."""
        return len(self._gt)

    def compute(self) -> dict[str, float]:
        p = self.prefix
        out = {f"{p}/count": float(self.count)}
        if not self.count:
            return out
        sim = np.concatenate(self._rows, axis=0)
        pos = np.zeros(sim.shape, dtype=bool)
        for t, ids in enumerate(self._gt):
            pos[t, list(ids)] = True
        rank_t, rank_i = retrieval_ranks(sim, pos)
        rank_i = rank_i[rank_i >= 0]
        out[f"{p}/count/images"] = float(rank_i.size)
        recalls = {}
        for k in self.ks:
            recalls[f"r@{k}_t2i"] = int((rank_t < k).sum()) / rank_t.size
        for k in self.ks:
            recalls[f"r@{k}_i2t"] = int((rank_i < k).sum()) / rank_i.size
        out.update({f"{p}/{name}": value for name, value in recalls.items()})
        out[f"{p}/rsum"] = sum(recalls.values())
        return out

    def state_dict(self) -> dict[str, Any]:
        rows = np.concatenate(self._rows, axis=0) if self._rows else np.zeros((0, self.num_images or 0))
        return {
            "prefix": self.prefix,
            "config": {"ks": list(self.ks)},
            "num_images": self.num_images,
            "rows": _encode(rows),
            "gt": [list(ids) for ids in self._gt],
        }

    def merge(self, other_state: Mapping[str, Any]) -> None:
        if other_state.get("prefix") != self.prefix:
            raise ValueError(
                f"cannot merge a {other_state.get('prefix')!r} metric state into {self.prefix!r}"
            )
        if dict(other_state.get("config", {})) != {"ks": list(self.ks)}:
            raise ValueError(
                f"retrieval: cannot merge states computed with different settings: "
                f"{other_state.get('config')} vs {{'ks': {list(self.ks)}}}"
            )
        gt = other_state.get("gt", [])
        if not gt:
            return
        num_images = int(other_state["num_images"])
        if self.num_images is not None and num_images != self.num_images:
            raise ValueError(
                f"retrieval: cannot merge a gallery of {num_images} images into {self.num_images}"
            )
        self.num_images = num_images
        self._rows.append(_decode(other_state["rows"], num_images).copy())
        self._gt.extend(tuple(int(i) for i in ids) for ids in gt)
