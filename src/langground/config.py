"""Typed run configuration: dataclasses, YAML presets shipped as package data, ``--set a.b=v`` overrides.

A :class:`Config` is everything needed to rebuild a run: the model, the data, the preprocessing, the
optimiser, the schedule and the run loop. Its resolved form is written as ``config.yaml`` into every run
directory and checkpoint, so a checkpoint can always rebuild its model and its preprocessing.

Values are checked against the dataclass field types when a preset, a YAML file or an override is read;
an unknown key or a value of the wrong type is a :class:`~langground.errors.LanggroundError` whose one-line
message names the key, where it came from and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from langground.data.transforms import TransformConfig
from langground.errors import LanggroundError
from langground.postprocess import PostprocessConfig
from langground.types import TASKS

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
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
    """

    name: str = "laconvnet_t"
    task: str = "rec"
    kwargs: dict[str, Any] = field(default_factory=dict)


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


@dataclass
class OptimConfig:
    """Optimiser (torch.optim) settings.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: base learning rate (peak of the schedule).
        weight_decay: L2 (adam, sgd) or decoupled (adamw) weight decay.
        no_decay_norm_bias: exempt biases, norm layers and embeddings from weight decay.
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    no_decay_norm_bias: bool = True


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per optimiser step.

    Attributes:
        name: ``cosine`` (decay to ``min_lr_ratio * lr`` at the last step), ``multistep`` (times ``gamma``
            at each of ``milestones`` epochs) or ``constant``.
        warmup_epochs: linear warm-up length in epochs (fractions allowed), from ``warmup_start * lr``.
    """

    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    warmup_start: float = 0.01
    min_lr_ratio: float = 0.0
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1


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
    """Metric settings that papers vary (the rest follow the postprocess thresholds).

    Attributes:
        min_mask_pixels: GRES counts a predicted mask with fewer pixels as "no target" (1: only an
            empty mask; ReLA and LaConvNet Table 6 use 50).
        box_match: REC with several ground-truth boxes: ``merged`` (their enclosing box), ``any`` (a
            hit on any box: Flickr30k's separate protocol), or null for the dataset protocol's choice.
    """

    min_mask_pixels: int = 1
    box_match: Literal["merged", "any"] | None = None


@dataclass
class Config:
    """A complete, resolvable run configuration (what ``config.yaml`` holds)."""

    name: str = ""
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    loss: dict[str, float] = field(default_factory=dict)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> Config:
        """Check cross-field constraints; returns ``self``. Raises LanggroundError naming the field."""
        m, d, r, o, s, t = self.model, self.data, self.run, self.optim, self.schedule, self.transforms

        def null_or(value: float | None, low: float) -> bool:
            return value is None or value >= low

        checks: list[tuple[bool, str, Any, str]] = [
            (m.task in TASKS, "model.task", m.task, f"one of {', '.join(TASKS)}"),
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
            (s.warmup_epochs >= 0, "schedule.warmup_epochs", s.warmup_epochs, ">= 0"),
            (0 < s.warmup_start <= 1, "schedule.warmup_start", s.warmup_start, "a number in (0, 1]"),
            (
                t.input_size >= 32 and t.input_size % 32 == 0,
                "transforms.input_size",
                t.input_size,
                "a multiple of 32, at least 32",
            ),
            (d.max_text_length >= 1, "data.max_text_length", d.max_text_length, "at least 1"),
            (null_or(d.train_limit, 1), "data.train_limit", d.train_limit, "null or at least 1"),
            (null_or(d.eval_limit, 1), "data.eval_limit", d.eval_limit, "null or at least 1"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise LanggroundError(f"config {key}={value!r}: expected {expected}")
        return self


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checks


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return ``value`` as type ``tp`` or raise _Mismatch (dataclass sub-trees raise LanggroundError)."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _Mismatch
        return _from_dict(tp, value, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (item,) = args or (Any,)
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        _, vt = args or (str, Any)
        return {str(k): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _bad_value(key: str, value: Any, tp: Any, source: str) -> LanggroundError:
    return LanggroundError(f"{source}: config key '{key}' = {value!r}: expected {_type_name(tp)}")


def _unknown_key(key: str, name: str, valid: list[str], source: str) -> LanggroundError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return LanggroundError(f"{source}: unknown config key '{key}'{hint}; valid keys: {', '.join(valid)}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            raise _unknown_key(key, str(name), names, source)
        try:
            kwargs[name] = _coerce(value, hints[name], key, source)
        except _Mismatch:
            raise _bad_value(key, value, hints[name], source) from None
    try:
        return cls(**kwargs)
    except LanggroundError:
        raise
    except (TypeError, ValueError) as e:
        raise LanggroundError(f"{source}: config section '{prefix or cls.__name__}': {e}") from None


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from a (possibly partial) nested dict; missing fields keep their defaults."""
    if not isinstance(data, dict):
        raise LanggroundError(f"{source}: expected a mapping of config sections, got {type(data).__name__}")
    return _from_dict(Config, data, "", source)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (lists instead of tuples) that ``config_from_dict`` turns back into ``cfg``."""
    return _plain(cfg)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------
# files and presets


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML atomically (temp file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(config_to_yaml(cfg))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LanggroundError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LanggroundError(f"{path}: cannot read config file: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LanggroundError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LanggroundError(
            f"{path}: expected a YAML mapping of config sections, got {type(data).__name__}"
        )
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _preset_dir() -> Any:
    return resources.files("langground") / "presets"


def list_presets() -> dict[str, str]:
    """``{preset name: description}`` of the presets shipped with the package, sorted by name."""
    out = {}
    for entry in sorted(_preset_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
            out[entry.name[: -len(".yaml")]] = str(data.get("description", ""))
    return out


def _resolve_raw(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """Raw dict of a preset name or YAML path with its ``base:`` chain merged in."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        data, source = _read_yaml(path), str(path)
    else:
        entry = _preset_dir() / f"{name_or_path}.yaml"
        if not entry.is_file():
            known = ", ".join(list_presets())
            raise LanggroundError(f"unknown preset {name_or_path!r}; presets: {known}")
        data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        source = f"preset {name_or_path}"
        data.setdefault("name", name_or_path)
    base = data.pop("base", None)
    if base is not None:
        if base in seen:
            raise LanggroundError(f"{source}: 'base: {base}' makes a cycle ({' -> '.join((*seen, base))})")
        base_data, _ = _resolve_raw(str(base), (*seen, name_or_path))
        base_data.pop("name", None)
        base_data.pop("description", None)
        data = _deep_merge(base_data, data)
    return data, source


def load_preset(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A shipped preset (by name) or a YAML config file, with ``a.b=v`` overrides applied and validated."""
    data, source = _resolve_raw(name_or_path)
    cfg = config_from_dict(data, source)
    return apply_overrides(cfg, overrides).validate()


def load_config(path: str | os.PathLike) -> Config:
    """Read a resolved ``config.yaml`` (as written by :func:`save_config`)."""
    path = Path(path)
    return config_from_dict(_read_yaml(path), str(path)).validate()


# --------------------------------------------------------------------------------------------------
# --set overrides


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def _wants_raw_string(tp: Any) -> bool:
    """A str-typed field keeps the override's text verbatim ("--set data.train_split=2014")."""
    if tp is str:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return str in typing.get_args(tp)
    return False


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Return a copy of ``cfg`` with ``key.path=value`` overrides applied (values read as YAML scalars).

    ``key.path`` walks dataclass fields; inside a ``dict`` field (``model.kwargs``, ``loss``,
    ``data.synth``) any key may be set. Raises LanggroundError for an unknown key or a mistyped value.
    """
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise LanggroundError(f"--set {item!r}: expected KEY=VALUE, e.g. run.epochs=5")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise LanggroundError(f"--set {item!r}: malformed key {key!r}")
        source = f"--set {item}"
        cls: Any = Config
        node = data
        item_type: Any = Any
        for i, part in enumerate(parts):
            done = ".".join(parts[: i + 1])
            if cls is None:  # inside a free-form dict field
                if i == len(parts) - 1:
                    value = text if _wants_raw_string(item_type) else _parse_scalar(text)
                    try:
                        node[part] = _plain(_coerce(value, item_type, done, source))
                    except _Mismatch:
                        raise _bad_value(done, value, item_type, source) from None
                else:
                    item_type = Any
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        raise LanggroundError(f"{source}: '{done}' is not a mapping")
                continue
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                raise _unknown_key(done, part, names, source)
            tp = _field_types(cls)[part]
            if i == len(parts) - 1:
                value = (
                    text
                    if _wants_raw_string(tp) and text.strip().lower() not in ("null", "~", "")
                    else _parse_scalar(text)
                )
                try:
                    _coerce(value, tp, done, source)
                except _Mismatch:
                    raise _bad_value(done, value, tp, source) from None
                node[part] = _plain(value)
            elif dataclasses.is_dataclass(tp):
                cls, node = tp, node[part]
            elif typing.get_origin(tp) is dict:
                cls = None
                item_type = (typing.get_args(tp) or (str, Any))[1]
                node = node.setdefault(part, {})
            else:
                raise LanggroundError(f"{source}: '{done}' is a {_type_name(tp)}, it has no sub-keys")
    return config_from_dict(data, "--set")
