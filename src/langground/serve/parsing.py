"""Request bodies -> (image bytes, texts, options): JSON (base64 image or an allowed local path) or
multipart/form-data (an image file and text fields). The pydantic models also document ``/docs``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from langground.serve.limits import ApiError, allowed_file, check_content_type, decode_base64
from langground.serve.runner import Options
from langground.serve.settings import ServeSettings

JSON, MULTIPART = "application/json", "multipart/form-data"


class GroundRequest(BaseModel):
    """``POST /v1/ground`` as JSON: one image (base64, or a path under ``--allow-path``) and its texts."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="The image file, base64 (a data: URL is fine too).")
    path: str | None = Field(None, description="Or a local image path inside a --allow-path folder.")
    expressions: str | list[str] = Field(..., description="One referring expression or a list of them.")
    explain: bool = Field(False, description="Add per-word attention maps (models that expose them).")
    box_threshold: float | None = Field(
        None, description="Generalized REC: keep boxes scoring at least this."
    )
    no_target_threshold: float | None = Field(None, description="gREC/gRES: 'no target' at this probability.")


class AnswerRequest(BaseModel):
    """``POST /v1/answer`` as JSON: one image and its questions (VQA checkpoints)."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="The image file, base64 (a data: URL is fine too).")
    path: str | None = Field(None, description="Or a local image path inside a --allow-path folder.")
    questions: str | list[str] = Field(..., description="One question or a list of them.")
    top_k: int = Field(5, ge=1, le=100, description="Answers returned per question.")
    explain: bool = Field(False, description="Add per-word attention maps (models that expose them).")


def multipart_schema(text_field: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "image": {"type": "string", "format": "binary"},
        text_field: {"type": "string", "description": "One per line (or repeat the field)."},
        "explain": {"type": "boolean"},
    }
    if text_field == "questions":
        props["top_k"] = {"type": "integer"}
    else:
        props["box_threshold"] = {"type": "number"}
        props["no_target_threshold"] = {"type": "number"}
    return {"type": "object", "required": ["image", text_field], "properties": props}


def openapi_body(model: type[BaseModel], text_field: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": model.model_json_schema()},
                MULTIPART: {"schema": multipart_schema(text_field)},
            },
        }
    }


@dataclass
class Parsed:
    """A request body, read: the image bytes, its texts (unchecked) and options."""

    image: bytes
    texts: Any
    options: Options


async def parse_request(request: Request, settings: ServeSettings, answer: bool) -> Parsed:
    kind = check_content_type(request.headers.get("content-type"), (JSON, MULTIPART))
    if kind == JSON:
        return await _parse_json(request, settings, answer)
    return await _parse_form(request, answer)


async def _parse_json(request: Request, settings: ServeSettings, answer: bool) -> Parsed:
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body: not valid JSON ({e.__class__.__name__}: {e})") from None
    model = AnswerRequest if answer else GroundRequest
    try:
        req = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ApiError(422, f"{where}: {first['msg']}{more}") from None
    if (req.image is None) == (req.path is None):
        raise ApiError(422, "give exactly one of 'image' (base64) and 'path'")
    if req.image is not None:
        data_bytes = decode_base64(req.image)
    else:
        path = allowed_file(req.path, settings)
        size = path.stat().st_size
        if size > settings.max_body_bytes:
            raise ApiError(
                413, f"path {req.path!r}: {size:,} bytes, over the limit of {settings.max_body_bytes:,}"
            )
        data_bytes = path.read_bytes()
    if isinstance(req, AnswerRequest):
        return Parsed(data_bytes, req.questions, Options(explain=req.explain, top_k=req.top_k))
    options = Options(
        explain=req.explain, box_threshold=req.box_threshold, no_target_threshold=req.no_target_threshold
    )
    return Parsed(data_bytes, req.expressions, options)


async def _parse_form(request: Request, answer: bool) -> Parsed:
    try:
        form = await request.form(max_files=1, max_fields=32)
    except ApiError:
        raise
    except Exception as e:  # starlette's multipart errors (bad boundary, too many parts, ...)
        raise ApiError(400, f"multipart body: {getattr(e, 'detail', None) or e}") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "image: missing: expected a file field named 'image'")
    data = await upload.read()
    field = "questions" if answer else "expressions"
    values = [v for v in form.getlist(field) if isinstance(v, str)]
    texts = [line for v in values for line in v.splitlines() if line.strip()]
    explain = _flag(form.get("explain"), "explain")
    if answer:
        top_k = _number(form.get("top_k"), "top_k", int)
        if top_k is not None and not 1 <= top_k <= 100:
            raise ApiError(422, f"top_k: {top_k} is outside 1..100")
        options = Options(explain=explain, top_k=top_k or 5)
    else:
        options = Options(
            explain=explain,
            box_threshold=_number(form.get("box_threshold"), "box_threshold", float),
            no_target_threshold=_number(form.get("no_target_threshold"), "no_target_threshold", float),
        )
    return Parsed(data, texts, options)


def _flag(value: Any, name: str) -> bool:
    if value is None or value == "":
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ApiError(422, f"{name}: {value!r} is not a boolean (true/false)")


def _number(value: Any, name: str, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        return kind(str(value).strip())
    except ValueError:
        raise ApiError(422, f"{name}: {value!r} is not a number") from None
