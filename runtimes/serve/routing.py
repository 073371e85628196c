"""What the routers share: the JSON POST route (body read, validated, run under the timeout, every
failure one JSON error), the orjson response, event streams, and model calls gathered with the
names of their items (so a bad item is a 400 that names it).

Imported by create_app once FastAPI is known to be installed (``require("fastapi", "serve")``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from ...errors import InputError
from .batching import ItemError
from .errors import ApiError, as_api_error
from .model import ServedModel
from .schemas import RESPONSE_MODELS, validation_error
from .state import ServerState

_timeout = getattr(asyncio, "timeout", None)  # 3.11+: no extra task per request

ERRORS_DOC = {
    s: {"model": RESPONSE_MODELS.error, "description": d}
    for s, d in (
        (400, "Bad input: the field is named in error.param"),
        (404, "Unknown model"),
        (413, "Body too large"),
        (503, "Overloaded or draining: retry after Retry-After seconds"),
        (504, "Took longer than the server's timeout"),
    )
}


class JSONResponse(Response):
    """orjson: a 512-float embedding encodes in 14 us instead of 360 us with json (a fifth of a
    request's server CPU), numpy float32 as its shortest repr (exact round trip, half the bytes)."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(srv: ServerState, request: Request, exc: ApiError) -> JSONResponse:
    """The one JSON error body, counted in the metrics under the request's route."""
    st = request.scope.setdefault("state", {})
    st["error"] = exc.code
    srv.metrics.errors.labels(st.get("route", "other"), exc.code or "error").inc()
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    """Server-sent events, unbuffered by proxies."""
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def served(srv: ServerState, request: Request, name: str | None) -> ServedModel:
    """The model a request names (or the only one), noted on the request for the access log."""
    m = srv.model(name)
    request.state.model = m.name
    return m


def post_route(router: APIRouter, srv: ServerState, path: str, schema, response_model) -> Callable:
    """A POST route: JSON body validated by ``schema``, every failure one JSON error, a timeout.
    The decorated ``fn(request, req)`` gets the validated request."""
    cfg = srv.cfg

    def wrap(fn):
        async def route(request: Request):
            try:
                body = await request.body()
                try:
                    data = json.loads(body)
                except (ValueError, RecursionError) as exc:
                    raise ApiError(
                        400, f"body is not valid JSON: {' '.join(str(exc).split())[:200]}", code="invalid_json"
                    ) from None
                try:
                    req = schema.model_validate(data)
                except ValidationError as exc:
                    raise validation_error(exc) from None
                if _timeout is not None:
                    async with _timeout(cfg.timeout_s):
                        return await fn(request, req)
                return await asyncio.wait_for(fn(request, req), cfg.timeout_s)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
                return error_response(srv, request, as_api_error(exc, cfg.timeout_s))

        route.__name__ = fn.__name__
        route.__doc__ = schema.__doc__
        # annotations are strings here (postponed evaluation): give FastAPI the real class
        route.__signature__ = inspect.Signature(
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
        )
        body_doc = {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}},
            }
        }
        router.post(path, response_model=response_model, responses=ERRORS_DOC, openapi_extra=body_doc)(route)
        return route

    return wrap


class Named:
    """A batcher call and what its items are called in the request (for error messages)."""

    __slots__ = ("coro", "names", "code")

    def __init__(self, coro, names: list[str], code: str = "invalid_image"):
        self.coro, self.names, self.code = coro, names, code


async def gather(jobs: list[Named]) -> list[Any]:
    """Run the jobs together; an item's bad input becomes a 400 naming that item."""
    if len(jobs) == 1:
        try:
            results = [await jobs[0].coro]
        except Exception as exc:  # noqa: BLE001 - mapped below
            results = [exc]
    else:
        results = await asyncio.gather(*(j.coro for j in jobs), return_exceptions=True)
    for j, r in zip(jobs, results):
        if isinstance(r, ItemError) and isinstance(r.error, InputError):
            where = j.names[r.index] if r.index < len(j.names) else j.names[0]
            raise ApiError(400, f"{where}: {r.error}", code=j.code, param=where)
        if isinstance(r, BaseException):
            raise r
    return results
