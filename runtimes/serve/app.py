"""The FastAPI app: the served models, their lifespan, and the routers (OpenAI-compatible routes in
openai_routes, mmdeploy's own in own_routes, the pages in page), each route parse -> model -> body."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from typing import Any

from ...errors import InputError, require
from .config import MODEL_NAME, ServeConfig
from .errors import ApiError, as_api_error
from .middleware import Guard
from .model import ServedModel
from .page import page_routes
from .state import ServerState

log = logging.getLogger("mmdeploy.serve")


def create_app(
    bundles: Mapping[str, Any],
    config: ServeConfig | None = None,
    *,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    **overrides,
):
    """FastAPI app serving ``bundles`` ({name: bundle folder, or an already loaded pipeline}).

    ``config`` (a :class:`ServeConfig`) and/or keyword overrides of its fields
    (``max_batch=16, api_key="k"``) set batching and limits; ``backend`` / ``precision`` /
    ``threads`` are passed to :func:`mmdeploy.runtimes.load` for the folders.
    """
    fastapi = require("fastapi", "serve")
    require("orjson", "serve")
    from fastapi import Request
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .openai_routes import openai_routes
    from .own_routes import own_routes
    from .routing import error_response
    from .schemas import request_models

    cfg = config or ServeConfig()
    if overrides:
        known = {f.name for f in fields(ServeConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TypeError(f"unknown server option(s): {', '.join(bad)}")
        cfg = replace(cfg, **overrides)
    if not bundles:
        raise InputError("give at least one bundle to serve")
    srv = ServerState(cfg)
    _load_models(srv, bundles, backend=backend, precision=precision, threads=threads)

    @asynccontextmanager
    async def lifespan(app):
        if cfg.warmup:
            t = time.perf_counter()
            await asyncio.gather(*(m.warmup() for m in srv.models.values()))
            log.info(
                "warmed up", extra={"fields": {"event": "warmup", "ms": round((time.perf_counter() - t) * 1000, 1)}}
            )
        log.info("ready", extra={"fields": {"event": "ready", "models": {n: m.card() for n, m in srv.models.items()}}})
        try:
            yield
        finally:
            srv.draining = True
            t = time.perf_counter()
            await asyncio.gather(*(m.close(drain=True) for m in srv.models.values()))
            srv.decode_pool.shutdown(wait=False, cancel_futures=True)
            log.info(
                "stopped",
                extra={"fields": {"event": "shutdown", "drain_ms": round((time.perf_counter() - t) * 1000, 1)}},
            )

    from ... import __version__

    app = fastapi.FastAPI(
        title="mmdeploy serve",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        description="OpenAI-compatible embeddings, zero-shot classification and captions from "
        'mmdeploy bundles. Errors: {"error": {message, type, code, param}}.',
    )
    app.state.server = srv

    req_models = request_models(cfg)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(srv, request, ApiError(exc.status_code, msg, code=code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # pragma: no cover - routes catch everything
        return error_response(srv, request, as_api_error(exc, cfg.timeout_s))

    app.include_router(openai_routes(srv, req_models))
    app.include_router(own_routes(srv, req_models))

    def openapi() -> dict:
        """FastAPI's schema plus the request classes (routes read their bodies themselves)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            comps = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in vars(req_models).values():
                s = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(s.pop("$defs", {}))
                comps[model.__name__] = s
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
    app.include_router(page_routes())
    app.add_middleware(Guard, server=srv)
    return app


def _load_models(srv: ServerState, bundles: Mapping[str, Any], **load_options) -> None:
    """Each bundle (a folder, or an already loaded pipeline) as a served model of ``srv``."""
    from ..select import load

    for name, src in bundles.items():
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise InputError(f"model name {name!r}: use letters, digits and . _ - : only")
        pipe = load(src, **load_options) if isinstance(src, (str, os.PathLike)) else src
        m = ServedModel(name, pipe, srv.cfg, srv)
        if not m.batchers:
            raise InputError(f"model {name!r} ({type(pipe).__name__}) has nothing this server can run")
        for comp, b in m.batchers.items():
            srv.metrics.watch_queue(name, comp, b)
        if m.has_chat:
            srv.metrics.watch_chat_cache(name, m)
        srv.models[name] = m
