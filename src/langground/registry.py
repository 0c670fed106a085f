"""timm-style model registry: ``register_model`` / ``create_model`` / ``list_models``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model factory under its function name."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def _ensure_builtin_models() -> None:
    # Importing the models package runs every model file's @register_model decorators.
    import langground.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _ensure_builtin_models()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    _ensure_builtin_models()
    return name in _MODELS


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model; ``cfg`` overrides the variant's defaults (e.g. ``task="res"``)."""
    _ensure_builtin_models()
    if name not in _MODELS:
        known = ", ".join(sorted(_MODELS)) or "none"
        raise ValueError(f"unknown model {name!r}; registered models: {known}")
    return _MODELS[name](**cfg)
