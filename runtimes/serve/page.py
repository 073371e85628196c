"""The pages a person opens: the playground at ``/`` and the API reference at ``/docs``.

Both are served by the server itself, with no CDN (edge machines are often offline): the
playground is one static HTML file with its script inline; ``/docs`` is Swagger UI 5 from
the ``fastapi-offline`` package's static files (part of the serve extra), reading ``/openapi.json``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .errors import ApiError

__all__ = ["page_routes"]

_HERE = Path(__file__).resolve().parent
_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


@lru_cache(maxsize=1)
def playground_html() -> bytes:
    return (_HERE / "playground.html").read_bytes()


def _swagger_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")  # only its static files are used
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "static"


def page_routes():
    """An APIRouter with the playground, ``/docs`` and Swagger UI's files."""
    from fastapi import APIRouter
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def playground():
        return Response(
            playground_html(),
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/docs", include_in_schema=False)
    async def docs():
        if _swagger_dir() is None:
            return HTMLResponse(
                '<!doctype html><title>mmdeploy serve API</title><link rel="icon" href="data:,">'
                "<p>Swagger UI's files are not installed here (<code>pip install fastapi-offline</code>, "
                'part of <code>mmdeploy[serve]</code>). The schema: <a href="/openapi.json">/openapi.json</a>.</p>'
            )
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="mmdeploy serve API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
        )

    @router.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        folder = _swagger_dir()
        if name not in _ASSETS or folder is None or not (folder / name).is_file():
            return JSONResponse(ApiError(404, f"no such asset: {name}", code="not_found").body(), status_code=404)
        return FileResponse(folder / name, media_type=_ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    return router
