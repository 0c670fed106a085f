"""Typed run configuration: the dataclasses of a run and their cross-field checks.

A :class:`Config` is everything needed to rebuild a run: the model, the data, the preprocessing, the
optimiser, the schedule and the run loop. Its resolved form is written as ``config.yaml`` into every run
directory and checkpoint, so a checkpoint can always rebuild its model and its preprocessing.

Reading and writing live in :mod:`langground.config_io` (re-exported here): YAML presets shipped as package
data, ``--set a.b=v`` overrides, and pydantic validating these plain dataclasses against their field types,
so that an unknown key or a value of the wrong type is a :class:`~langground.errors.LanggroundError` whose
one-line message names the key, where it came from and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from langground.data.transforms import TransformConfig
from langground.errors import LanggroundError
from langground.postprocess import PostprocessConfig

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "ParamGroupConfig",
    "PostprocessConfig",
    "RunConfig",
    "ScheduleConfig",
    "TransformConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "list_presets",
    "load_config",
    "load_preset",
    "save_config",
]

AmpMode = Literal["none", "auto", "bf16", "fp16"]


@dataclass
class ModelConfig:
    """Which registered model to build and how.

    Attributes:
        name: a name from ``langground.list_models()``.
        task: the task the model is trained for (``rec``, ``res``, ``gref``, ``gres``, ``vqa``).
        kwargs: keyword arguments of the model factory (its variant defaults otherwise). The vocabulary
            size, the number of answers, the task and the input size are filled in by the engine.
        init_from: fine-tune: a checkpoint or run directory whose weights initialise the model where
            names and shapes match (another task's heads are kept at init; ``engine/init_from.py``).
    """

    name: str = "laconvnet_t"
    task: str = "rec"
    kwargs: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None


@dataclass
class DataConfig:
    """Where the records come from.

    Attributes:
        dataset: dataset name for ``langground.data.open_dataset`` (``synth``, ``refcoco``, ...).
        root: dataset directory; relative paths are relative to the working directory. For ``synth``, a
            missing (or empty) directory is generated from ``synth`` first.
        open_kwargs: extra keyword arguments of ``open_dataset`` (e.g. ``task: rec`` for the synthetic world).
        train_split / val_split: training split and the split evaluated during training (``null``: none).
        test_splits: splits evaluated with the best weights when training ends.
        max_text_length: expressions are truncated to this many words.
        vocab_min_count: words seen fewer times in the training split map to ``<unk>``.
        train_limit / eval_limit: use only the first N records of a split (quick runs, tests).
        synth: ``SynthConfig`` fields of the world generated when ``root`` is absent.
        synth_workers: processes used to generate the world.
        cache_images_mb: keep up to this many MB of decoded images in memory, per loader process
            (small datasets: every image is decoded once instead of once per expression).
        group_by_image: batches hold whole images with all their expressions (``run.batch_size``
            counts images): each image is decoded and augmented once, and models whose vision does not
            read the text encode it once for all its expressions.
        max_queries_per_image: with ``group_by_image``, an image's expressions are split into groups of
            at most this many (``null``: no limit).
    """

    dataset: str = "synth"
    root: str = "data/synth"
    open_kwargs: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str | None = "val"
    test_splits: list[str] = field(default_factory=list)
    max_text_length: int = 20
    vocab_min_count: int = 1
    train_limit: int | None = None
    eval_limit: int | None = None
    synth: dict[str, Any] = field(default_factory=dict)
    synth_workers: int = 2
    cache_images_mb: float = 0
    group_by_image: bool = False
    max_queries_per_image: int | None = None


@dataclass
class ParamGroupConfig:
    """One optimiser parameter group: the parameters whose names match ``params`` get their own settings.

    Attributes:
        params: ``fnmatch`` patterns over ``model.named_parameters()`` names (``backbone.*``,
            ``text_encoder.*``); a parameter joins the first group that matches, the rest stay in the
            default group.
        lr: learning rate of the group (``null``: ``optim.lr * lr_scale``).
        lr_scale: multiplier of ``optim.lr`` when ``lr`` is not given.
        weight_decay: weight decay of the group (``null``: ``optim.weight_decay``).
    """

    params: list[str] = field(default_factory=list)
    lr: float | None = None
    lr_scale: float = 1.0
    weight_decay: float | None = None


@dataclass
class OptimConfig:
    """Optimiser (torch.optim) settings.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: base learning rate (peak of the schedule).
        weight_decay: L2 (adam, sgd) or decoupled (adamw) weight decay.
        no_decay_norm_bias: exempt biases, norm layers and embeddings from weight decay.
        groups: per-module learning rates and weight decay (e.g. LADS / TransVG: backbone and text
            encoder at 1e-5, the rest at 1e-4), see :class:`ParamGroupConfig`.
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    no_decay_norm_bias: bool = True
    groups: list[ParamGroupConfig] = field(default_factory=list)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per optimiser step.

    Attributes:
        name: ``cosine`` (decay to ``min_lr_ratio * lr`` at the last step), ``multistep`` (times ``gamma``
            at each of ``milestones`` epochs), ``constant`` or ``plateau`` (times ``gamma`` when the
            epoch's mean training loss has not improved for ``patience`` epochs: DMN §4.3).
        warmup_epochs: linear warm-up length in epochs (fractions allowed), from ``warmup_start * lr``.
        clock: what the cosine decay runs on: ``steps`` (step / total steps) or ``budget`` (the larger of
            that and the fraction of ``run.max_minutes`` of training time spent, so the lr reaches its
            floor when the time limit stops the run, however fast the machine is).
    """

    name: Literal["cosine", "multistep", "constant", "plateau"] = "cosine"
    clock: Literal["steps", "budget"] = "steps"
    warmup_epochs: float = 0.0
    warmup_start: float = 0.01
    min_lr_ratio: float = 0.0
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    patience: int = 2


@dataclass
class RunConfig:
    """The training loop.

    Attributes:
        epochs: passes over the training split; ``max_steps`` (optimiser steps), when set, ends the run
            earlier or later and sets the schedule's length.
        batch_size: samples per process per micro-batch; an optimiser step sees
            ``batch_size * grad_accum * world_size`` samples.
        eval_batch_size: batch size of evaluation (``null``: ``2 * batch_size``).
        clip_grad_norm: clip the global gradient norm to this (``null``: no clipping).
        ema / ema_decay / ema_warmup: keep an exponential moving average of the weights; with warm-up the
            decay ramps as ``min(decay, (1 + n) / (10 + n))`` so short runs are not dominated by the init.
        amp: ``none``, ``bf16`` (autocast on CPU and CUDA), ``fp16`` (CUDA, with a gradient scaler) or
            ``auto`` (bf16 where the hardware supports it, else none).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        deterministic: deterministic algorithms (exact resume) at some speed cost on GPU.
        num_threads: torch CPU threads (``null``: torch's default).
        eval_interval / eval_steps: evaluate every N epochs / N optimiser steps (0 or null: off); the
            run always evaluates at its end when a ``val_split`` is set.
        save_interval / save_steps: checkpoint every N epochs / N steps; the run always saves at its end.
        keep_last: how many periodic checkpoints to keep (``best/`` is kept besides).
        log_every: optimiser steps between two lines of ``metrics.jsonl``.
        max_minutes: stop (with a checkpoint) after this much training time.
        curriculum_epochs: length curriculum: epoch ``e`` < this trains on the ``(e+1)/(N+1)`` shortest
            expressions only (repeated to a full epoch), so words are grounded before syntax (0: off).
        tensorboard: also write TensorBoard scalars and example pictures when tensorboard is installed.
        log_images: example predictions drawn to TensorBoard at each evaluation.
        out_dir: run directory when the command line gives none.
    """

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int | None = None
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    ema: bool = False
    ema_decay: float = 0.9998
    ema_warmup: bool = True
    amp: AmpMode = "none"
    device: str = "auto"
    seed: int = 0
    deterministic: bool = True
    num_workers: int = 0
    num_threads: int | None = None
    eval_interval: int = 1
    eval_steps: int | None = None
    save_interval: int = 1
    save_steps: int | None = None
    keep_last: int = 2
    log_every: int = 10
    max_minutes: float | None = None
    curriculum_epochs: int = 0
    tensorboard: bool = True
    log_images: int = 4
    progress: bool = True
    out_dir: str | None = None


@dataclass
class EvalConfig:
    """Metric protocol settings, fixed per benchmark (never taken from ``postprocess``; docs/metrics.md).

    Attributes:
        gres_no_target: how GRES decides that a prediction says "no target": ``head`` (the no-target
            head's probability >= 0.5: ReLA's released evaluation) or ``min_pixels`` (a mask with fewer
            than ``min_mask_pixels`` pixels, or the head: LaConvNet Table 6).
        min_mask_pixels: the pixel count of the ``min_pixels`` rule (50 in LaConvNet Table 6).
        grec_score_threshold: GREC keeps predicted boxes scoring at least this (gRefCOCO: 0.7).
        grec_iou_threshold: GREC matches a predicted box to a referent at this IoU (0.5).
        grec_matching: ``benchmark`` (the released gRefCOCO script's matching) or ``maximum`` (a maximum
            one-to-one matching on IoU).
        box_match: REC with several ground-truth boxes: ``merged`` (their enclosing box), ``any`` (a
            hit on any box: Flickr30k's separate protocol), or null for the dataset protocol's choice.
    """

    gres_no_target: Literal["head", "min_pixels"] = "head"
    min_mask_pixels: int = 50
    grec_score_threshold: float = 0.7
    grec_iou_threshold: float = 0.5
    grec_matching: Literal["benchmark", "maximum"] = "benchmark"
    box_match: Literal["merged", "any"] | None = None


@dataclass
class Config:
    """A complete, resolvable run configuration (what ``config.yaml`` holds)."""

    # pydantic's settings for this tree (nested dataclasses inherit them): an unknown key is an error and
    # nothing is cast (no bool as int, no "3" as int); not a field, since it has no annotation.
    __pydantic_config__ = {"extra": "forbid", "strict": True}

    name: str = ""
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    #: loss weights by term name (``giou``, ``l1``, a model's own ``mi``, per-layer ``giou_0``) and the
    #: task's loss options (``objectness``, ``center_radius``); see ``langground.tasks``.
    loss: dict[str, Any] = field(default_factory=dict)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> Config:
        """Check cross-field constraints; returns ``self``. Raises LanggroundError naming the field."""
        m, d, r, o, s, t, e = (
            self.model,
            self.data,
            self.run,
            self.optim,
            self.schedule,
            self.transforms,
            self.eval,
        )

        def null_or(value: float | None, low: float) -> bool:
            return value is None or value >= low

        from langground.tasks import list_tasks  # the registry imports models' building blocks: lazily

        tasks = list_tasks()
        checks: list[tuple[bool, str, Any, str]] = [
            (m.task in tasks, "model.task", m.task, f"one of {', '.join(tasks)}"),
            (bool(m.name), "model.name", m.name, "a registered model name"),
            (r.batch_size >= 1, "run.batch_size", r.batch_size, "at least 1"),
            (r.grad_accum >= 1, "run.grad_accum", r.grad_accum, "at least 1"),
            (r.epochs >= 1 or bool(r.max_steps), "run.epochs", r.epochs, "at least 1"),
            (null_or(r.max_steps, 1), "run.max_steps", r.max_steps, "null or at least 1"),
            (null_or(r.eval_batch_size, 1), "run.eval_batch_size", r.eval_batch_size, "null or at least 1"),
            (r.keep_last >= 1, "run.keep_last", r.keep_last, "at least 1"),
            (r.log_every >= 1, "run.log_every", r.log_every, "at least 1"),
            (r.num_workers >= 0, "run.num_workers", r.num_workers, ">= 0"),
            (null_or(r.num_threads, 1), "run.num_threads", r.num_threads, "null or at least 1"),
            (r.eval_interval >= 0, "run.eval_interval", r.eval_interval, ">= 0 (0: off)"),
            (r.save_interval >= 0, "run.save_interval", r.save_interval, ">= 0 (0: off)"),
            (null_or(r.eval_steps, 0), "run.eval_steps", r.eval_steps, "null or >= 0 (0: off)"),
            (null_or(r.save_steps, 0), "run.save_steps", r.save_steps, "null or >= 0 (0: off)"),
            (r.log_images >= 0, "run.log_images", r.log_images, ">= 0"),
            (r.max_minutes is None or r.max_minutes > 0, "run.max_minutes", r.max_minutes, "null or > 0"),
            (r.curriculum_epochs >= 0, "run.curriculum_epochs", r.curriculum_epochs, ">= 0"),
            (0.0 < r.ema_decay < 1.0, "run.ema_decay", r.ema_decay, "a number in (0, 1)"),
            (
                r.clip_grad_norm is None or r.clip_grad_norm > 0,
                "run.clip_grad_norm",
                r.clip_grad_norm,
                "null or a positive number",
            ),
            (o.lr > 0, "optim.lr", o.lr, "a positive number"),
            (o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0"),
            (o.eps > 0, "optim.eps", o.eps, "a positive number"),
            (s.warmup_epochs >= 0, "schedule.warmup_epochs", s.warmup_epochs, ">= 0"),
            (0 < s.warmup_start <= 1, "schedule.warmup_start", s.warmup_start, "a number in (0, 1]"),
            (0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", s.min_lr_ratio, "a number in [0, 1]"),
            (s.gamma > 0, "schedule.gamma", s.gamma, "a positive number"),
            (s.patience >= 0, "schedule.patience", s.patience, ">= 0 epochs"),
            (
                s.clock != "budget" or r.max_minutes is not None,
                "schedule.clock",
                s.clock,
                "'steps' unless run.max_minutes sets a time budget",
            ),
            (
                t.input_size >= 32 and t.input_size % 32 == 0,
                "transforms.input_size",
                t.input_size,
                "a multiple of 32, at least 32",
            ),
            (d.max_text_length >= 1, "data.max_text_length", d.max_text_length, "at least 1"),
            (d.vocab_min_count >= 1, "data.vocab_min_count", d.vocab_min_count, "at least 1"),
            (null_or(d.train_limit, 1), "data.train_limit", d.train_limit, "null or at least 1"),
            (null_or(d.eval_limit, 1), "data.eval_limit", d.eval_limit, "null or at least 1"),
            (d.cache_images_mb >= 0, "data.cache_images_mb", d.cache_images_mb, ">= 0 (0: off)"),
            (
                null_or(d.max_queries_per_image, 1),
                "data.max_queries_per_image",
                d.max_queries_per_image,
                "null or at least 1",
            ),
            (e.min_mask_pixels >= 1, "eval.min_mask_pixels", e.min_mask_pixels, "at least 1"),
            (
                0 <= e.grec_score_threshold <= 1,
                "eval.grec_score_threshold",
                e.grec_score_threshold,
                "a number in [0, 1]",
            ),
            (
                0 < e.grec_iou_threshold <= 1,
                "eval.grec_iou_threshold",
                e.grec_iou_threshold,
                "a number in (0, 1]",
            ),
        ]
        for i, g in enumerate(o.groups):
            key = f"optim.groups[{i}]"
            checks += [
                (bool(g.params), f"{key}.params", g.params, "at least one parameter name pattern"),
                (g.lr is None or g.lr > 0, f"{key}.lr", g.lr, "null or a positive number"),
                (g.lr_scale > 0, f"{key}.lr_scale", g.lr_scale, "a positive number"),
                (null_or(g.weight_decay, 0), f"{key}.weight_decay", g.weight_decay, "null or >= 0"),
            ]
        for ok, key, value, expected in checks:
            if not ok:
                raise LanggroundError(f"config {key}={value!r}: expected {expected}")
        return self


# Reading, writing and overriding (config_io imports this module only when first used: no import cycle).
from langground.config_io import (  # noqa: E402
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    list_presets,
    load_config,
    load_preset,
    save_config,
)
