"""Every limit a request meets, each answered by its own 4xx with a one-line JSON error.

body size (413, checked on ``Content-Length`` and again while the body streams in), content type (415),
image pixels (413 from the image header, before any decoding; PIL's decompression-bomb guard also answers
413), undecodable images and bad base64 (400), local paths outside ``--allow-path`` (403), expression
count and length (422).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from langground.inference.images import to_rgb
from langground.serve.settings import ServeSettings
from langground.text.tokenizer import tokenize


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line, whatever went in


# ---------------------------------------------------------------------------------------- body size


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuses bodies over ``limit`` bytes with 413 — from ``Content-Length`` before
    reading anything, and for chunked bodies as soon as the count passes the limit."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, 400, f"Content-Length {declared.decode('latin-1')!r}: not a number")
                return
            if size > self.limit:
                await _send_error(send, 413, self._message(size))
                return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, self._message(seen, at_least=True))
            return message

        await self.app(scope, counted, send)

    def _message(self, size: int, at_least: bool = False) -> str:
        what = f"more than {size:,}" if at_least else f"{size:,}"
        return f"request body of {what} bytes is over the limit of {self.limit:,} bytes (--max-body-mb)"


async def _send_error(send: Any, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}, separators=(",", ":")).encode()  # as JSONResponse writes it
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------- content type


def media_type(content_type: str | None) -> str:
    """``multipart/form-data; boundary=...`` -> ``multipart/form-data``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None, allowed: Sequence[str]) -> str:
    """The request's media type if it is one of ``allowed``, else a 415."""
    kind = media_type(content_type)
    if kind not in allowed:
        shown = kind or "none"
        raise ApiError(415, f"Content-Type {shown!r} is not supported: send {' or '.join(allowed)}")
    return kind


# ---------------------------------------------------------------------------------------- images


def decode_base64(data: Any, field: str = "image") -> bytes:
    """A base64 string (a ``data:image/...;base64,`` URL too) -> bytes; bad base64 is a 400."""
    if not isinstance(data, str) or not data:
        raise ApiError(400, f"{field}: expected a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if ";base64" not in head:
            raise ApiError(400, f"{field}: a data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field}: not valid base64") from None


def allowed_file(path: Any, settings: ServeSettings) -> Path:
    """A local path a JSON request names: 403 outside every ``--allow-path`` folder (symlinks resolved)."""
    if not isinstance(path, str) or not path:
        raise ApiError(400, f"path: expected a file path string, got {type(path).__name__}")
    if not settings.allow_paths:
        raise ApiError(403, "path: local paths are disabled on this server (start it with --allow-path DIR)")
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in settings.allow_paths):
        raise ApiError(403, f"path {path!r}: outside the folders this server may read (--allow-path)")
    if not resolved.is_file():
        raise ApiError(400, f"path {path!r}: no such image file")
    return resolved


def open_image(data: bytes, settings: ServeSettings, name: str = "image") -> Image.Image:
    """Image bytes -> upright RGB, refusing too many pixels (413) before the pixels are decoded."""
    if not data:
        raise ApiError(400, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            pixels = img.width * img.height
            if pixels > settings.max_pixels:
                raise ApiError(
                    413,
                    f"{name}: {img.width}x{img.height} = {pixels:,} pixels is over the limit of "
                    f"{settings.max_pixels:,} pixels (--max-pixels); downscale it: the model reads it at its "
                    "own input size anyway",
                )
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError as e:  # PIL's own guard, above 2 x MAX_IMAGE_PIXELS
        raise ApiError(413, f"{name}: refused by PIL's decompression-bomb guard ({e})") from None
    except UnidentifiedImageError:
        raise ApiError(400, f"{name}: not an image file (PIL cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt files
        raise ApiError(400, f"{name}: cannot decode the image ({e})") from None


# ---------------------------------------------------------------------------------------- expressions


def check_texts(texts: Any, settings: ServeSettings, field: str = "expressions") -> list[str]:
    """A string or a list of strings -> the list, within the count and length limits (422)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(422, f"{field}: expected a string or a list of strings")
    texts = [t.strip() for t in texts]
    if not texts:
        raise ApiError(422, f"{field}: none given: expected at least one")
    if len(texts) > settings.max_expressions:
        raise ApiError(
            422, f"{field}: {len(texts)} given, over the limit of {settings.max_expressions} per request"
        )
    for i, t in enumerate(texts):
        if len(t) > settings.max_expression_chars:
            raise ApiError(
                422,
                f"{field}[{i}]: {len(t)} characters, over the limit of {settings.max_expression_chars}",
            )
        if not tokenize(t):
            raise ApiError(422, f"{field}[{i}] ({t!r}): has no words: expected a referring expression")
    return texts
