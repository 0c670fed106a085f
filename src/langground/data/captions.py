"""Caption-level records shared by the loaders' ``task="phrase"`` / ``task="retrieval"`` modes.

A caption record has ``text`` = the caption, ``phrases`` = its grounded phrases (character spans with
their boxes) and ``boxes`` = every distinct box of its phrases (what a referent-safe crop keeps whole).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from langground.data.base import DatasetProtocol
from langground.types import Phrase

#: Metric keys of the caption tasks (``langground.tasks``), as ``DatasetProtocol.metrics`` lists them:
#: phrase recall@1 (a phrase's box at IoU >= 0.5 in original pixels), retrieval recall at 1/5/10 both ways.
PHRASE_METRICS = ("phrase/recall@1",)
RETRIEVAL_METRICS = (
    *(f"retrieval/r@{k}_{d}" for d in ("t2i", "i2t") for k in (1, 5, 10)),
    "retrieval/rsum",
)
CAPTION_TASKS = {"phrase": PHRASE_METRICS, "retrieval": RETRIEVAL_METRICS}


def caption_protocol(protocol: DatasetProtocol, task: str) -> DatasetProtocol:
    """``protocol`` for the caption records of task ``task`` (``phrase`` or ``retrieval``): they are scored
    on that task only; the input size is the benchmark's REC size (phrases are boxes too)."""
    size = {task: protocol.input_size["rec"]} if "rec" in protocol.input_size else {}
    return dataclasses.replace(protocol, tasks=(task,), metrics={task: CAPTION_TASKS[task]}, input_size=size)


def union_box(boxes: np.ndarray) -> np.ndarray:
    """``(K, 4)`` xyxy -> their ``(1, 4)`` enclosing box (``(0, 4)`` for none)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])[None]


def distinct_boxes(phrases: Sequence[Phrase]) -> np.ndarray:
    """Every distinct box of ``phrases``, first appearance first, ``(K, 4)`` float32."""
    seen: dict[tuple[float, ...], None] = {}
    for p in phrases:
        for b in np.asarray(p.boxes, np.float32).reshape(-1, 4):
            seen.setdefault(tuple(b.tolist()), None)
    return np.asarray(list(seen), np.float32).reshape(-1, 4)


def join_phrases(texts: Sequence[str], sep: str = " and ") -> tuple[str, list[tuple[int, int]]]:
    """One caption of ``texts`` joined by ``sep``, and each text's character span in it.

    >>> join_phrases(["the red cube", "the ball"])
    ('the red cube and the ball', [(0, 12), (17, 25)])
    """
    spans, pos = [], 0
    for t in texts:
        spans.append((pos, pos + len(t)))
        pos += len(t) + len(sep)
    return sep.join(texts), spans
