"""The FastAPI app: ``create_app(grounder, settings)`` serves one Grounder.

Endpoints: ``POST /v1/ground`` and ``POST /v1/answer`` (JSON or multipart), ``GET /v1/model``,
``GET /healthz``, ``GET /metrics`` (Prometheus), the page at ``/`` and the OpenAPI docs at ``/docs``.
Every refused request gets a 4xx with a one-line ``{"error": ...}``; an unexpected failure is logged here
with its traceback and answered with a 500 that names only a request id.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from langground.errors import LanggroundError
from langground.inference.images import check_expressions
from langground.inference.unknown_words import warn_unknown
from langground.serve.batching import DynamicBatcher
from langground.serve.docs import mount_offline_docs
from langground.serve.limits import ApiError, BodyLimitMiddleware, check_texts, open_image
from langground.serve.metrics import MetricsMiddleware, ServeMetrics
from langground.serve.parsing import AnswerRequest, GroundRequest, openapi_body, parse_request
from langground.serve.runner import GrounderRunner, checkpoint_info, probe_explain
from langground.serve.runner import Request as Job
from langground.serve.settings import ServeSettings

logger = logging.getLogger("langground.serve")

PAGE_DIR = Path(__file__).parent / "page"
ENDPOINTS = ("/", "/v1/ground", "/v1/answer", "/v1/model", "/healthz", "/metrics", "/docs", "/openapi.json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def model_info(grounder: Any, settings: ServeSettings) -> dict[str, Any]:
    """What ``GET /v1/model`` answers (``explain`` is filled in by the warm-up pass)."""
    ckpt = checkpoint_info(grounder, settings.checkpoint)
    model = grounder.model
    return {
        "name": ckpt["name"] or type(model).__name__,
        "architecture": type(model).__name__,
        "task": grounder.task,
        "tasks": [grounder.task],
        "supported_tasks": list(getattr(model, "supported_tasks", ()) or [grounder.task]),
        "answers_questions": bool(grounder.answers_questions),
        "endpoint": "/v1/answer" if grounder.answers_questions else "/v1/ground",
        "input_size": grounder.input_size,
        "max_text_length": grounder.max_text_length,
        "vocabulary_size": len(grounder.vocab),
        "answer_count": len(grounder.answers) if grounder.answers else None,
        "trained_on": grounder.trained_on,
        "explain": None,
        "checkpoint": {"path": ckpt["path"], "sha256": ckpt["sha256"]},
        "device": str(grounder.device),
        "backend": getattr(grounder, "backend", "torch"),
        "limits": {
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "max_body_bytes": settings.max_body_bytes,
            "max_pixels": settings.max_pixels,
            "max_explain_pixels": settings.max_explain_pixels,
            "max_expressions": settings.max_expressions,
            "max_expression_chars": settings.max_expression_chars,
        },
    }


def _caught(fn: Callable[[], Any]) -> list[str]:
    """The messages of the warnings ``fn`` raises (the Grounder's truncation / unknown-word warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return list(dict.fromkeys(str(w.message) for w in caught))


def create_app(grounder: Any, settings: ServeSettings | None = None) -> FastAPI:
    """An app serving ``grounder``; its batcher starts and stops with the app's lifespan.

    ``grounder.batch_size`` is set to ``settings.max_batch``: one batch of merged requests is one forward.
    """
    settings = settings or ServeSettings()
    grounder.batch_size = settings.max_batch
    info = model_info(grounder, settings)
    metrics = ServeMetrics()

    def observe(pairs: int, requests: int) -> None:
        metrics.batch_pairs.observe(pairs)
        metrics.batch_requests.observe(requests)

    batcher = DynamicBatcher(
        GrounderRunner(grounder, settings), settings.max_batch, settings.max_wait_ms / 1000, on_batch=observe
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.warmup:
            info["explain"] = await run_in_threadpool(probe_explain, grounder)
        await batcher.start()
        logger.info("serving %s (%s, task %s)", info["name"], info["checkpoint"]["path"], info["task"])
        try:
            yield
        finally:
            await batcher.close()  # after the server's in-flight requests: finishes every queued job

    app = FastAPI(
        title="langground",
        summary="Language-guided visual grounding: boxes, masks and answers for expressions about images.",
        lifespan=lifespan,
        docs_url=None,  # mount_offline_docs: no CDN
        redoc_url=None,
    )
    app.state.settings, app.state.grounder, app.state.metrics, app.state.batcher = (
        settings,
        grounder,
        metrics,
        batcher,
    )
    app.state.info = info

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), settings.api_key):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    async def handle(request: Request, answer: bool) -> Response:
        start = time.perf_counter()
        try:
            authorize(request)
            return await _predict(request, answer, start)
        except ApiError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            return error_response(e.status, e.message, headers)
        except LanggroundError as e:
            return error_response(400, str(e))
        except Exception:
            rid = uuid.uuid4().hex[:12]
            logger.exception("request %s to %s failed", rid, request.url.path)
            return error_response(
                500, f"internal server error (request {rid}; the details are in the server log)"
            )

    async def _predict(request: Request, answer: bool, start: float) -> Response:
        if answer and not grounder.answers_questions:
            raise ApiError(
                400,
                f"model {info['name']} (task {grounder.task}) does not answer questions: "
                "POST /v1/ground for boxes and masks",
            )
        if not answer and grounder.answers_questions:
            raise ApiError(400, f"model {info['name']} answers questions (task vqa): POST /v1/answer")
        parsed = await parse_request(request, settings, answer)
        texts = check_texts(parsed.texts, settings, "questions" if answer else "expressions")
        options = parsed.options
        if options.explain and info["explain"] is False:
            raise ApiError(
                400, f"model {info['name']} returns no cross-modal attention maps: explain is not available"
            )
        try:
            config = grounder.thresholds(
                box_threshold=options.box_threshold, no_target_threshold=options.no_target_threshold
            )
        except LanggroundError as e:
            raise ApiError(422, str(e)) from None
        image = await run_in_threadpool(open_image, parsed.image, settings)
        if options.explain and image.width * image.height > settings.max_explain_pixels:
            raise ApiError(
                413,
                f"explain on a {image.width}x{image.height} image: over the limit of "
                f"{settings.max_explain_pixels:,} pixels for attention maps (--max-explain-pixels); "
                "downscale it or leave explain off",
            )
        notes = _caught(lambda: check_expressions(texts, grounder.max_text_length))
        out = await batcher.submit(Job(image, texts, options, config), len(texts), key=options)
        notes += _caught(
            lambda: warn_unknown(
                out["words"], grounder.vocab, synthetic_only=grounder.synthetic_only, stacklevel=1
            )
        )
        latency = (time.perf_counter() - start) * 1000
        body = {
            "model": info["name"],
            "width": image.width,
            "height": image.height,
            "results": out["results"],
            "warnings": notes,
            "batch": out["batch"],
            "latency_ms": round(latency, 2),
        }
        return JSONResponse(body, headers={"Server-Timing": f"total;dur={latency:.1f}"})

    @app.post("/v1/ground", openapi_extra=openapi_body(GroundRequest, "expressions"), tags=["predict"])
    async def ground(request: Request) -> Response:
        """Boxes / masks / no-target decisions for expressions about one image, in its original pixels."""
        return await handle(request, answer=False)

    @app.post("/v1/answer", openapi_extra=openapi_body(AnswerRequest, "questions"), tags=["predict"])
    async def answer(request: Request) -> Response:
        """Top-k answers to questions about one image (VQA checkpoints)."""
        return await handle(request, answer=True)

    @app.get("/v1/model", tags=["model"])
    async def model(request: Request) -> Response:
        """The served model: name, task, input size, vocabulary size, checkpoint hash, limits."""
        try:
            authorize(request)
        except ApiError as e:
            return error_response(e.status, e.message, {"WWW-Authenticate": "Bearer"})
        return JSONResponse(info)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Response:
        """200 while the server takes requests; 503 once it is shutting down."""
        if not batcher.running:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": info["name"]})

    @app.get("/metrics", tags=["ops"])
    async def prometheus(request: Request) -> Response:
        """Request counts by endpoint and status, latency histograms, batch sizes (Prometheus text)."""
        try:
            authorize(request)
        except ApiError as e:
            return error_response(e.status, e.message, {"WWW-Authenticate": "Bearer"})
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")
    mount_offline_docs(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        rid = uuid.uuid4().hex[:12]
        logger.error("request %s to %s failed", rid, request.url.path, exc_info=exc)
        return error_response(
            500, f"internal server error (request {rid}; the details are in the server log)"
        )

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)
    return app
