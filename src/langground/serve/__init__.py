"""``langground serve``: any checkpoint behind a REST API and a web page (FastAPI + uvicorn).

Needs the ``serve`` extra (``pip install 'langground[serve]'``); importing :mod:`langground` never needs it.

    >>> from langground.inference import Grounder                       # doctest: +SKIP
    >>> from langground.serve import ServeSettings, create_app          # doctest: +SKIP
    >>> app = create_app(Grounder.from_pretrained("runs/rec"), ServeSettings(max_batch=8))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from langground.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # pulls in FastAPI: only when asked for
        from langground.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'langground.serve' has no attribute {name!r}")
