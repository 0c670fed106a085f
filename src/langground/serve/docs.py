"""``/docs`` served offline: the Swagger UI's script and style come from the ``swagger-ui-bundle`` package
(the ``serve`` extra) instead of FastAPI's default CDN, which a machine without internet cannot reach."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def mount_offline_docs(app: FastAPI) -> None:
    """Add ``/docs`` (Swagger UI over ``app.openapi_url``) with assets served by the app itself."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # an install without the extra's bundle: the CDN page is still better than none
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    js = f"{ASSETS}/swagger-ui-bundle.js" if swagger_ui_path else None
    css = f"{ASSETS}/swagger-ui.css" if swagger_ui_path else None

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        kwargs = {"swagger_js_url": js, "swagger_css_url": css} if js else {}
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=app.title, **kwargs)
