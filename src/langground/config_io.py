"""Reading and writing :class:`~langground.config.Config`: YAML presets, ``--set a.b=v`` overrides, files.

Values are validated by pydantic (``TypeAdapter`` over the plain dataclasses, strict JSON-mode rules: no
bool as int, no float as int, no number as str; an int is a float; tuples have their length). Its first
error is translated into the project's one-line :class:`~langground.errors.LanggroundError` naming the
source (file, ``--set`` item or preset), the dotted key, the bad value and what was expected; pydantic's
own multi-line text never reaches the user. Everything here is re-exported by :mod:`langground.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tempfile
import types
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic_core
import yaml
from pydantic_core import ValidationError

from langground._files import chmod_default
from langground.errors import LanggroundError

if TYPE_CHECKING:
    from pydantic import TypeAdapter

    from langground.config import Config

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "list_presets",
    "load_config",
    "load_preset",
    "save_config",
]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads floats without a dot (``1e-4``), which YAML 1.1 leaves as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass through pydantic, with one-line errors


@functools.cache
def _root() -> type[Config]:
    from langground.config import Config  # not at the top: langground.config re-exports this module

    return Config


@functools.cache
def _adapter() -> TypeAdapter[Config]:
    from pydantic import TypeAdapter  # pydantic's schema machinery: imported (and built) on first use

    return TypeAdapter(_root())


def _non_null(tp: Any) -> Any:
    """``X`` for ``X | None``, else ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp: Any, inner: bool = False) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a, inner) for a in args)
    if dataclasses.is_dataclass(tp) and not inner:
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    if origin is not None:
        items = ", ".join("..." if a is Ellipsis else _type_name(a, inner=True) for a in args)
        return f"{origin.__name__}[{items}]"
    return "any value" if tp is Any else getattr(tp, "__name__", str(tp))


def _is_str(tp: Any) -> bool:
    """``str`` or ``str | None``: such a field keeps ``--set`` text verbatim."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return tp is str or (union and str in typing.get_args(tp))


def _field_at(loc: Sequence[str | int]) -> tuple[str, Any, int, list[str] | None]:
    """Walk a pydantic error location (or a ``--set`` key) through the dataclass fields.

    Returns the dotted key of the deepest config field on the path, its annotation, how many parts of
    ``loc`` lead to it, and, for a name that is no field, the valid names of its section (annotation None).
    """
    tp: Any = _root()
    key = ""
    for used, part in enumerate(loc):
        inner = _non_null(tp)
        item = (typing.get_args(inner) or (None,))[0] if typing.get_origin(inner) is list else None
        if dataclasses.is_dataclass(inner) and isinstance(part, str):
            names = [f.name for f in dataclasses.fields(inner)]
            key = f"{key}.{part}" if key else part
            if part not in names:
                return key, None, used + 1, names
            tp = typing.get_type_hints(inner)[part]
        elif dataclasses.is_dataclass(item) and isinstance(part, int):  # list[ParamGroupConfig]
            key, tp = f"{key}[{part}]", item
        else:
            return key, tp, used, None
    return key, tp, len(loc), None


def _error(err: Any, data: Any, source: str) -> LanggroundError:
    """pydantic's first error -> ``SOURCE: config key 'a.b' = VALUE: expected TYPE`` (or an unknown key)."""
    key, tp, used, valid = _field_at(err["loc"])
    if valid is not None:
        name = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return LanggroundError(f"{source}: unknown config key '{key}'{hint}; valid keys: {', '.join(valid)}")
    value = pydantic_core.to_jsonable_python(data)
    try:
        for part in err["loc"][:used]:
            value = value[part]
    except (KeyError, IndexError, TypeError):
        value = err["input"]
    return LanggroundError(f"{source}: config key '{key or 'config'}' = {value!r}: expected {_type_name(tp)}")


def _validate(data: dict[str, Any], source: str) -> Config:
    try:
        # JSON mode: a config is JSON-shaped data, and strict JSON rules are the ones wanted (a list is
        # a tuple, a mapping is a dataclass, nothing else is cast)
        payload = pydantic_core.to_json(data)
    except pydantic_core.PydanticSerializationError as e:
        raise LanggroundError(
            f"{source}: config holds a value that is not plain data: {' '.join(str(e).split())}"
        ) from None
    try:
        return _adapter().validate_json(payload)
    except ValidationError as e:
        raise _error(e.errors()[0], data, source) from None


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from a (possibly partial) nested dict; missing fields keep their defaults."""
    if not isinstance(data, dict):
        raise LanggroundError(f"{source}: expected a mapping of config sections, got {type(data).__name__}")
    return _validate(data, source)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (lists instead of tuples) that ``config_from_dict`` turns back into ``cfg``."""
    return pydantic_core.to_jsonable_python(cfg)  # no schema: a field set by code to a tuple still dumps


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
        chmod_default(tmp, directory=False)  # mkstemp's 0600 -> what open() gives (0644 under umask 022)
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
        data = _load_yaml(text)
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
            data = _load_yaml(entry.read_text(encoding="utf-8")) or {}
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
        data = _load_yaml(entry.read_text(encoding="utf-8")) or {}
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
        return _load_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Return a copy of ``cfg`` with ``key.path=value`` overrides applied (values read as YAML).

    ``key.path`` walks dataclass fields; inside a ``dict`` field (``model.kwargs``, ``loss``,
    ``data.synth``) any key may be set. A ``str`` field keeps the text verbatim (``data.train_split=2014``)
    unless it is ``null``. Raises LanggroundError for an unknown key or a mistyped value.
    """
    data = config_to_dict(cfg)
    out = None
    for item in overrides:
        if "=" not in item:
            raise LanggroundError(f"--set {item!r}: expected KEY=VALUE, e.g. run.epochs=5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise LanggroundError(f"--set {item!r}: malformed key {key.strip()!r}")
        source = f"--set {item}"
        node = data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})  # an unknown section: the validation below names it
            if not isinstance(node, dict):
                _, tp, used, _ = _field_at(parts[: i + 1])
                what = f"is a {_type_name(tp)}" if used == i + 1 and tp is not None else "is not a mapping"
                raise LanggroundError(f"{source}: '{'.'.join(parts[: i + 1])}' {what}, it has no sub-keys")
        _, tp, used, _ = _field_at(parts)
        raw = used == len(parts) and _is_str(tp)
        node[parts[-1]] = (
            text if raw and text.strip().lower() not in ("null", "~", "") else _parse_scalar(text)
        )
        out = _validate(data, source)  # validated item by item: an error names its own --set item
    return out if out is not None else _validate(data, "--set")
