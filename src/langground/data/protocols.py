"""Evaluation protocols of the benchmarks the papers report (../shared/papers/), one per dataset name.

Metric names are the keys ``langground.engine.metrics.Evaluator`` computes, so ``langground eval`` can
print each benchmark's numbers in the order its papers print them:
- ``rec/prec@0.5``: REC accuracy, box IoU >= 0.5 in original pixels (LaConvNet Sec. 5.1 "IoU@0.5").
- ``res/oiou`` (overall IoU = sum I / sum U: DMN's "overall IoU", DMN Sec. 4.2), ``res/miou``
  (mean per-expression IoU; what LaConvNet's released test.py averages), ``res/pr@0.5`` ... ``res/pr@0.9`` (share of expressions above X, DMN).
- gRefCOCO (ReLA): ``gres/ciou``, ``gres/giou``, ``gres/n_acc``, ``gres/t_acc``; the box task
  ``grec/prec@f1`` (score >= 0.7, the released script's greedy matching on GIoU >= 0.5, correct only when
  F1 = 1). Every definition and where ours differs from each released script: docs/metrics.md.
- VQA: ``vqa/acc`` overall, and per CLEVR question type (``vqa/acc/family/<type>``).
Input sizes follow LaConvNet Sec. 5.2: 416 for REC, 320 for RES, 224 for VQA; gRefCOCO follows ReLA (480).
"""

from __future__ import annotations

import dataclasses

from langground.data.base import DatasetProtocol

REC = ("rec/prec@0.5",)
RES = ("res/oiou", "res/miou", "res/pr@0.5", "res/pr@0.6", "res/pr@0.7", "res/pr@0.8", "res/pr@0.9")
GRES = ("gres/ciou", "gres/giou", "gres/n_acc", "gres/t_acc")
GREC = ("grec/prec@f1", "grec/n_acc", "grec/t_acc")
VQA = ("vqa/acc",)
PHRASE = ("phrase/recall@1",)  # Flickr30k Entities' Recall@1 (data.captions.PHRASE_METRICS)
SIZES = {"rec": 416, "res": 320, "vqa": 224, "recres": 640}  # recres: RefTR trains at 640

UNC_SPLITS = ("train", "val", "testA", "testB")


def _refcoco(
    benchmark: str, splits: tuple[str, ...], eval_splits: tuple[str, ...], notes: str = ""
) -> DatasetProtocol:
    return DatasetProtocol(
        benchmark=benchmark,
        tasks=("rec", "res", "recres"),
        metrics={"rec": REC, "res": RES, "recres": REC + RES},
        input_size={"rec": SIZES["rec"], "res": SIZES["res"], "recres": SIZES["recres"]},
        splits=splits,
        eval_splits=eval_splits,
        notes=notes,
    )


REFCOCO = _refcoco("RefCOCO (UNC)", UNC_SPLITS, ("val", "testA", "testB"))
REFCOCO_PLUS = _refcoco("RefCOCO+ (UNC)", UNC_SPLITS, ("val", "testA", "testB"))
REFCOCOG_UMD = _refcoco("RefCOCOg (UMD)", ("train", "val", "test"), ("val", "test"))
REFCOCOG_GOOGLE = _refcoco(
    "RefCOCOg (Google)", ("train", "val"), ("val",), "Google split: val only, overlaps train images"
)
REFCLEF_UNC = _refcoco(
    "RefCLEF / ReferIt (UNC)", ("train", "val", "testA", "testB", "testC"), ("testA", "testB")
)
REFCLEF_BERKELEY = _refcoco("ReferItGame (RefCLEF, Berkeley splits)", ("train", "val", "test"), ("test",))
REFERIT = DatasetProtocol(
    benchmark="ReferItGame",
    tasks=("rec",),
    metrics={"rec": REC},
    input_size={"rec": SIZES["rec"]},
    splits=("train", "val", "test"),
    eval_splits=("test",),
    notes="LaConvNet Tab. 3 reports test",
)
GREFCOCO = DatasetProtocol(
    benchmark="gRefCOCO",
    tasks=("gres", "gref"),
    metrics={"gres": GRES, "gref": GREC},
    input_size={"gres": 480, "gref": 480},
    splits=UNC_SPLITS,
    eval_splits=("val", "testA", "testB"),
    box_match="all",
    notes="no target by the no-target head (ReLA's evaluator); eval.gres_no_target=min_pixels gives "
    "LaConvNet Tab. 6's rule (a mask under 50 pixels counts as no target)",
)
FLICKR_MERGED = DatasetProtocol(
    benchmark="Flickr30k Entities",
    tasks=("rec", "phrase"),  # phrase: every phrase of a caption in one pass (RefTR's multi-phrase mode)
    metrics={"rec": REC, "phrase": PHRASE},
    input_size={"rec": SIZES["rec"], "phrase": SIZES["rec"]},
    splits=("train", "val", "test"),
    eval_splits=("val", "test"),
    box_match="merged",
    notes="merged protocol: all boxes of a phrase merged into one union box (LaConvNet Sec. 5.1)",
)
FLICKR_SEPARATE = dataclasses.replace(
    FLICKR_MERGED,
    benchmark="Flickr30k Entities (any-box)",
    box_match="any",
    notes="separate protocol: a prediction is correct when it hits any ground-truth box of the phrase",
)
CLEVR_REF = DatasetProtocol(
    benchmark="CLEVR-Ref+",
    tasks=("res", "rec"),
    metrics={"res": ("res/oiou",), "rec": REC},
    input_size={"res": SIZES["res"], "rec": SIZES["rec"]},
    splits=("train", "val", "test"),
    eval_splits=("val",),
    box_match="merged",
    notes="overall IoU of union masks (LaConvNet Tab. 5); several referents are merged",
)
CLEVR = DatasetProtocol(
    benchmark="CLEVR",
    tasks=("vqa",),
    metrics={"vqa": VQA},
    input_size={"vqa": SIZES["vqa"]},
    splits=("train", "val", "test"),
    eval_splits=("val",),
    notes="accuracy overall and per question type (LaConvNet Tab. 7); test answers are not public",
)
SYNTH = DatasetProtocol(
    benchmark="langground synthetic world",
    tasks=("rec", "res", "gref", "gres", "vqa", "recres", "phrase"),
    metrics={
        "rec": REC,
        "res": RES,
        "gref": GREC,
        "gres": GRES,
        "vqa": VQA,
        "recres": REC + RES,
        "phrase": PHRASE,
    },
    input_size={},  # no paper resolution: the presets choose (the demo trains at 128)
    splits=("train", "val", "testA", "testB", "cogentB"),
    eval_splits=("val", "testA", "testB", "cogentB"),
    box_match="all",
    notes="also reported per expression/question family; cogentB: unseen attribute combinations (CoGenT)",
)

TRANSVG_NOTE = "TransVG/ReSC index; their loader casts boxes to int before evaluation"


def with_note(protocol: DatasetProtocol, note: str) -> DatasetProtocol:
    """``protocol`` with ``note`` appended to its notes (same benchmark, read through another layout)."""
    notes = f"{protocol.notes}; {note}" if protocol.notes else note
    return dataclasses.replace(protocol, notes=notes)
