"""``langground data stats``: counts per split, family, no-target, objects and questions, any layout."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from langground.data.base import RecordDataset
from langground.tasks import get_task


def dataset_stats(ds: RecordDataset, top_answers: int = 10) -> dict[str, Any]:
    """Counts over every record of ``ds`` (no image or mask is read).

    Per split: ``images``, ``expressions`` (or ``questions`` for VQA), ``refs``, ``no_target``,
    ``multi_target`` (> 1 box), ``boxes`` and ``objects`` (distinct referred objects; for VQA the
    objects of the scenes asked about, when the layout knows them). ``families``: family -> split -> n.
    """
    vqa = get_task(ds.task).needs_answers
    unit = "questions" if vqa else "expressions"
    per: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "images": set(),
            unit: 0,
            "refs": set(),
            "no_target": 0,
            "multi_target": 0,
            "boxes": 0,
            "objects": set(),
        }
    )
    families: dict[str, Counter[str]] = defaultdict(Counter)
    answers: Counter[str] = Counter()
    scene_objects = getattr(ds, "scene_objects", None)
    for i in range(len(ds)):
        rec = ds.get(i, resolve_size=False)
        s = per[rec.split]
        s["images"].add(rec.image_id)
        s[unit] += 1
        if rec.ref_id is not None:
            s["refs"].add(rec.ref_id)
        k = len(rec.boxes)
        s["no_target"] += int(rec.no_target)
        s["multi_target"] += int(k > 1)
        s["boxes"] += k
        for a in rec.ann_ids:
            s["objects"].add((rec.image_id, a))
        if rec.family is not None:
            families[rec.family][rec.split] += 1
        if rec.answer is not None:
            answers[rec.answer] += 1
    splits: dict[str, dict[str, int]] = {}
    for name in sorted(per):
        s = per[name]
        objects = len(s["objects"])
        if vqa and scene_objects:
            objects = sum(scene_objects.get(i, 0) for i in s["images"])
        splits[name] = {
            "images": len(s["images"]),
            unit: s[unit],
            "refs": len(s["refs"]),
            "no_target": s["no_target"],
            "multi_target": s["multi_target"],
            "boxes": s["boxes"],
            "objects": objects,
        }
    out: dict[str, Any] = {
        "dataset": ds.name,
        "task": ds.task,
        "layout": ds.layout,
        "benchmark": ds.protocol.benchmark,
        "records": len(ds),
        "splits": splits,
        "families": {f: dict(sorted(c.items())) for f, c in sorted(families.items())},
    }
    if answers:
        out["answers"] = dict(answers.most_common(top_answers))
    return out
