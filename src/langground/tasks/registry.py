"""The task registry: ``register_task`` (a class decorator), ``get_task``, ``list_tasks``."""

from __future__ import annotations

from typing import TypeVar

from langground.errors import LanggroundError
from langground.tasks.base import Task

_TASKS: dict[str, Task] = {}
T = TypeVar("T", bound=type[Task])


def register_task(cls: T) -> T:
    """Register a :class:`Task` subclass under its ``name`` (one instance serves everyone)."""
    name = cls.name
    if not name:
        raise ValueError(f"{cls.__name__}: a task needs a non-empty `name`")
    if name in _TASKS and type(_TASKS[name]) is not cls:
        raise ValueError(f"task {name!r} is registered twice ({type(_TASKS[name]).__name__}, {cls.__name__})")
    if not cls.primary_metric:
        raise ValueError(f"task {name!r} needs a primary_metric")
    _TASKS[name] = cls()
    return cls


def _ensure_builtin_tasks() -> None:
    import langground.tasks.builtin  # noqa: F401  (registers rec, res, gref, gres, vqa, phrase, retrieval)


def list_tasks() -> tuple[str, ...]:
    """Registered task names, built-in ones first (in registration order)."""
    _ensure_builtin_tasks()
    return tuple(_TASKS)


def get_task(task: str | Task) -> Task:
    """The registered task of that name (a Task passes through). Unknown: a one-line LanggroundError."""
    if isinstance(task, Task):
        return task
    _ensure_builtin_tasks()
    if task not in _TASKS:
        raise LanggroundError(f"unknown task {task!r}; expected one of {', '.join(_TASKS)}")
    return _TASKS[task]
