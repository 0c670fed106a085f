"""Evaluation protocols of the benchmarks the papers report (../shared/papers/), one per dataset.

Metric names (what ``langground.engine.metrics`` computes):
- ``prec@0.5``: REC accuracy, box IoU >= 0.5 in original pixels (LaConvNet Sec. 5.1 "IoU@0.5").
- ``miou`` (mean per-expression mask IoU), ``oiou`` (overall IoU = sum I / sum U; DMN's "mIoU" is this
  cumulative form), ``pr@0.5`` ... ``pr@0.9`` (share of expressions with mask IoU above X, DMN Sec. 4.2).
- gRefCOCO (ReLA): ``ciou``, ``giou``, ``n_acc``, ``t_acc``; box task ``gref_prec`` (score >= 0.7,
  one-to-one matching at IoU >= 0.5, correct only when F1 = 1).
- VQA: ``accuracy`` overall and ``accuracy_per_family`` (CLEVR question types).
Input sizes follow LaConvNet Sec. 5.2: 416 for REC, 320 for RES, 224 for VQA; gRefCOCO follows ReLA (480).
"""

from __future__ import annotations

from langground.data.base import DatasetProtocol

REC = ("prec@0.5",)
RES = ("miou", "oiou", "pr@0.5", "pr@0.6", "pr@0.7", "pr@0.8", "pr@0.9")
GRES = ("ciou", "giou", "n_acc", "t_acc")
GREC = ("gref_prec", "n_acc")
VQA = ("accuracy", "accuracy_per_family")
SIZES = {"rec": 416, "res": 320, "vqa": 224}

UNC_SPLITS = ("train", "val", "testA", "testB")


def _refcoco(benchmark: str, splits: tuple[str, ...], eval_splits: tuple[str, ...], notes: str = "") -> DatasetProtocol:
    return DatasetProtocol(
        benchmark=benchmark,
        tasks=("rec", "res"),
        metrics={"rec": REC, "res": RES},
        input_size={"rec": SIZES["rec"], "res": SIZES["res"]},
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
REFCLEF_UNC = _refcoco("RefCLEF / ReferIt (UNC)", ("train", "val", "testA", "testB", "testC"), ("testA", "testB"))
REFCLEF_BERKELEY = _refcoco("ReferIt (Berkeley)", ("train", "val", "test"), ("test",))
REFERIT = DatasetProtocol(
    benchmark="ReferItGame",
    tasks=("rec",),
    metrics={"rec": REC},
    input_size={"rec": SIZES["rec"]},
    splits=("train", "val", "test"),
    eval_splits=("test",),
)
GREFCOCO = DatasetProtocol(
    benchmark="gRefCOCO",
    tasks=("gres", "gref"),
    metrics={"gres": GRES, "gref": GREC},
    input_size={"gres": 480, "gref": 480},
    splits=UNC_SPLITS,
    eval_splits=("val", "testA", "testB"),
    box_match="all",
    notes="ReLA: a predicted mask with < 50 positive pixels counts as no-target",
)
FLICKR_MERGED = DatasetProtocol(
    benchmark="Flickr30k Entities",
    tasks=("rec",),
    metrics={"rec": REC},
    input_size={"rec": SIZES["rec"]},
    splits=("train", "val", "test"),
    eval_splits=("val", "test"),
    box_match="merged",
    notes="merged protocol: all boxes of a phrase merged into one union box (LaConvNet Sec. 5.1)",
)
FLICKR_SEPARATE = DatasetProtocol(
    benchmark="Flickr30k Entities (any-box)",
    tasks=("rec",),
    metrics={"rec": REC},
    input_size={"rec": SIZES["rec"]},
    splits=("train", "val", "test"),
    eval_splits=("val", "test"),
    box_match="any",
    notes="separate protocol: a prediction is correct when it hits any ground-truth box of the phrase",
)
CLEVR_REF = DatasetProtocol(
    benchmark="CLEVR-Ref+",
    tasks=("res", "rec"),
    metrics={"res": ("oiou",), "rec": REC},
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
    notes="test answers are not public; families are CLEVR question types",
)
SYNTH = DatasetProtocol(
    benchmark="langground synthetic world",
    tasks=("rec", "res", "gref", "gres", "vqa"),
    metrics={"rec": REC, "res": RES, "gref": GREC, "gres": GRES, "vqa": VQA},
    input_size={"rec": 320, "res": 320, "gref": 320, "gres": 320, "vqa": 320},
    splits=("train", "val", "testA", "testB"),
    eval_splits=("val", "testA", "testB"),
    box_match="all",
    notes="also reported per expression/question family",
)

TRANSVG_NOTE = "TransVG/ReSC index; their loader casts boxes to int before evaluation"
