"""Tasks as objects: each task owns its heads, loss terms, decoding to original pixels and metrics.

Built in: ``rec``, ``res``, ``gref``, ``gres`` (RefCOCO / gRefCOCO), ``vqa``, ``phrase`` (every phrase of a
caption: Flickr30k Entities) and ``retrieval`` (image-text matching). A new task is one file: subclass
:class:`Task`, decorate it with :func:`register_task`.
"""

from langground.tasks.base import HEADS, Frame, Task
from langground.tasks.decode import DecodeContext, PostprocessConfig
from langground.tasks.registry import get_task, list_tasks, register_task

__all__ = [
    "HEADS",
    "DecodeContext",
    "Frame",
    "PostprocessConfig",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
]
