"""The FastAPI app: routes stay thin (parse, hand to the served model, shape the answer)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from typing import Any, Mapping

import numpy as np

from ...errors import InputError, require
from ..scoring import l2_normalize
from .batching import ItemError
from .config import MODEL_NAME, ServeConfig
from .errors import ApiError, as_api_error, json_type
from .inputs import check_text, classify_input, images_of, opt_int
from .middleware import Guard
from .model import ServedModel
from .state import ServerState

log = logging.getLogger("mmdeploy.serve")
_timeout = getattr(asyncio, "timeout", None)  # 3.11+: no extra task per request


def create_app(bundles: Mapping[str, Any], config: ServeConfig | None = None, *, backend: str | None = None,
               precision: str | None = None, threads: int | None = None, **overrides):
    """FastAPI app serving ``bundles`` ({name: bundle folder, or an already loaded pipeline}).

    ``config`` (a :class:`ServeConfig`) and/or keyword overrides of its fields
    (``max_batch=16, api_key="k"``) set batching and limits; ``backend`` / ``precision`` /
    ``threads`` are passed to :func:`mmdeploy.runtimes.load` for the folders.
    """
    fastapi = require("fastapi", "serve")
    orjson = require("orjson", "serve")
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    class JSONResponse(Response):
        """orjson: a 512-float embedding encodes in 14 us instead of 360 us with json (a fifth of a
        request's server CPU), numpy float32 as its shortest repr (exact round trip, half the bytes)."""

        media_type = "application/json"

        def render(self, content) -> bytes:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)

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
    from ..select import load

    for name, src in bundles.items():
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise InputError(f"model name {name!r}: use letters, digits and . _ - : only")
        pipe = load(src, backend=backend, precision=precision, threads=threads) if isinstance(src, (str, os.PathLike)) else src
        m = ServedModel(name, pipe, cfg, srv)
        if not m.batchers:
            raise InputError(f"model {name!r} ({type(pipe).__name__}) has nothing this server can run")
        for comp, b in m.batchers.items():
            srv.metrics.watch_queue(name, comp, b)
        srv.models[name] = m

    @asynccontextmanager
    async def lifespan(app):
        if cfg.warmup:
            t = time.perf_counter()
            await asyncio.gather(*(m.warmup() for m in srv.models.values()))
            log.info("warmed up", extra={"fields": {"event": "warmup", "ms": round((time.perf_counter() - t) * 1000, 1)}})
        log.info("ready", extra={"fields": {"event": "ready", "models": {n: m.card() for n, m in srv.models.items()}}})
        try:
            yield
        finally:
            srv.draining = True
            t = time.perf_counter()
            await asyncio.gather(*(m.close(drain=True) for m in srv.models.values()))
            srv.decode_pool.shutdown(wait=False, cancel_futures=True)
            log.info("stopped", extra={"fields": {"event": "shutdown", "drain_ms": round((time.perf_counter() - t) * 1000, 1)}})

    app = fastapi.FastAPI(title="mmdeploy serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = srv

    def fail(request: Request, exc: ApiError):
        st = request.scope.setdefault("state", {})
        st["error"] = exc.code
        srv.metrics.errors.labels(st.get("route", "other"), exc.code or "error").inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)

    def api(fn):
        """Route wrapper: JSON body in, JSON out, every failure an OpenAI-style error, a timeout."""

        async def route(request: Request):
            try:
                body = await request.body()
                try:
                    data = json.loads(body)
                except (ValueError, RecursionError) as exc:
                    raise ApiError(400, f"body is not valid JSON: {' '.join(str(exc).split())[:200]}", code="invalid_json") from None
                if not isinstance(data, dict):
                    raise ApiError(400, f"body must be a JSON object, got {json_type(data)}", code="invalid_json")
                if _timeout is not None:
                    async with _timeout(cfg.timeout_s):
                        return await fn(request, data)
                return await asyncio.wait_for(fn(request, data), cfg.timeout_s)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
                return fail(request, as_api_error(exc, cfg.timeout_s))

        route.__name__ = fn.__name__
        # annotations are strings here (postponed evaluation): give FastAPI the real class
        route.__signature__ = inspect.Signature(
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
        )
        return route

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return fail(request, ApiError(exc.status_code, msg, code=code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # pragma: no cover - routes catch everything
        return fail(request, as_api_error(exc, cfg.timeout_s))

    @app.post("/v1/embeddings")
    @api
    async def embeddings(request: Request, body: dict):
        m = srv.model(body)
        request.state.model = m.name
        raw = body.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list):
            inputs = raw
        else:
            raise ApiError(400, f"input must be a string or a list of strings, got {json_type(raw)}",
                           code="invalid_type", param="input")
        if not inputs:
            raise ApiError(400, "input is empty", code="empty_input", param="input")
        if len(inputs) > cfg.max_items:
            raise ApiError(400, f"too many inputs: {len(inputs)} (this server takes at most {cfg.max_items} per request)",
                           code="too_many_items", param="input")
        for i, s in enumerate(inputs):
            if not isinstance(s, str):
                what = "token arrays are not supported, send text" if isinstance(s, (int, list)) else f"got {json_type(s)}"
                raise ApiError(400, f"input[{i}] must be a string (text, or an image as a data URL or base64): {what}",
                               code="invalid_type", param=f"input[{i}]")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}", code="invalid_value",
                           param="encoding_format")
        dims = opt_int(body, "dimensions", 1, 1 << 16)
        texts, t_idx, images, i_idx = [], [], [], []
        for i, s in enumerate(inputs):
            where = f"input[{i}]" if isinstance(raw, list) else "input"
            ref = classify_input(s, cfg.allow_local_paths, where)
            if ref is None:
                if len(s) > cfg.max_text_chars:
                    raise ApiError(400, f"{where} is {len(s):,} characters long (limit {cfg.max_text_chars:,})",
                                   code="text_too_long", param=where)
                check_text(s, where)
                texts.append(s)
                t_idx.append(i)
            else:
                images.append(ref)
                i_idx.append(i)
        if texts and not m.has_text:
            raise ApiError(400, f"model {m.name!r} does not embed text", code="unsupported_input", param="input")
        if images and not m.has_vision:
            what = "images" if m.has_text else "anything"
            raise ApiError(400, f"model {m.name!r} does not embed {what} (input[{i_idx[0]}] is an image)",
                           code="unsupported_input", param="input")
        request.state.items = len(inputs)
        state = request.scope["state"]
        jobs = []
        if texts:
            jobs.append(_named(m.embed_texts(texts, state), [f"input[{i}]" for i in t_idx], "invalid_input"))
        if images:
            jobs.append(_named(m.embed_images(images, state), [f"input[{i}]" for i in i_idx]))
        results = await _gather(jobs)
        vecs: list[np.ndarray] = [None] * len(inputs)  # type: ignore[list-item]
        tokens = 0
        k = 0
        if texts:
            for i, (v, n) in zip(t_idx, results[k]):
                vecs[i] = v
                tokens += n
            k += 1
        if images:
            for i, v in zip(i_idx, results[k]):
                vecs[i] = v
        srv.metrics.items.labels(m.name, "text").inc(len(texts))
        srv.metrics.items.labels(m.name, "image").inc(len(images))
        if dims is not None:
            d = vecs[0].shape[-1]
            if dims > d:
                raise ApiError(400, f"dimensions {dims} > the model's {d}", code="invalid_value", param="dimensions")
            vecs = [l2_normalize(v[:dims]) for v in vecs]
        data = [
            {"object": "embedding", "index": i,
             "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() if fmt == "base64"
             else np.ascontiguousarray(v, np.float32)}
            for i, v in enumerate(vecs)
        ]
        return JSONResponse({"object": "list", "data": data, "model": m.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "images": len(images)}})

    @app.post("/v1/classify")
    @api
    async def classify(request: Request, body: dict):
        m = srv.model(body)
        request.state.model = m.name
        if not m.can_classify:
            raise ApiError(400, f"model {m.name!r} cannot classify (needs a CLIP bundle)", code="unsupported_model", param="model")
        refs = images_of(body, cfg)
        labels = body.get("labels")
        if isinstance(labels, str):
            labels = labels.split(",")
        if not isinstance(labels, list) or not all(isinstance(l, str) for l in labels):
            raise ApiError(400, "labels must be a list of strings", code="invalid_type", param="labels")
        labels = [l.strip() for l in labels if l and l.strip()]
        if len(labels) < 2:
            raise ApiError(400, "give at least two labels to choose between", code="invalid_value", param="labels")
        if len(labels) > cfg.max_labels:
            raise ApiError(400, f"too many labels: {len(labels)} (limit {cfg.max_labels})", code="too_many_items", param="labels")
        for i, l in enumerate(labels):
            check_text(l, f"labels[{i}]")
        template = body.get("template")
        template = "{}" if template is None else template
        if not isinstance(template, str):
            raise ApiError(400, f"template must be a string, got {json_type(template)}", code="invalid_type", param="template")
        check_text(template, "template")
        if "{}" not in template or len(template) > 1000:
            raise ApiError(400, f"template {template[:100]!r} must contain '{{}}' where the label goes (1000 chars at most)",
                           code="invalid_value", param="template")
        try:
            prompts = [template.format(l) for l in labels]
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiError(400, f"template {template[:100]!r} has braces other than one '{{}}': {exc!r}",
                           code="invalid_value", param="template") from None
        request.state.items = len(refs)
        state = request.scope["state"]
        names = ["image"] if body.get("image") is not None else [f"images[{i}]" for i in range(len(refs))]
        text, img = await _gather([_named(m.label_embeddings(prompts, state), ["labels"], "invalid_input"),
                                   _named(m.embed_images(refs, state), names)])
        probs = m.pipe.scores(np.stack(img), text)
        srv.metrics.items.labels(m.name, "image").inc(len(refs))
        data = []
        for i, p in enumerate(probs):
            ranked = sorted(zip(labels, map(float, p)), key=lambda t: -t[1])
            data.append({"index": i, "label": ranked[0][0], "score": ranked[0][1],
                         "scores": [{"label": l, "score": s} for l, s in ranked]})
        return JSONResponse({"object": "list", "model": m.name, "data": data})

    @app.post("/v1/caption")
    @api
    async def caption(request: Request, body: dict):
        m = srv.model(body)
        request.state.model = m.name
        if not m.has_caption:
            raise ApiError(400, f"model {m.name!r} does not caption images", code="unsupported_model", param="model")
        refs = images_of(body, cfg)
        mnt = opt_int(body, "max_new_tokens", 1, m.max_new_tokens)
        beams = opt_int(body, "num_beams", 1, cfg.max_beams)
        request.state.items = len(refs)
        names = ["image"] if body.get("image") is not None else [f"images[{i}]" for i in range(len(refs))]
        (caps,) = await _gather([_named(m.caption(refs, mnt, beams, request.scope["state"]), names)])
        srv.metrics.items.labels(m.name, "caption").inc(len(refs))
        return JSONResponse({"object": "list", "model": m.name,
                             "data": [{"index": i, "caption": c} for i, c in enumerate(caps)]})

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [m.card() for m in srv.models.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        m = srv.models.get(model_id)
        if m is None:
            srv.metrics.errors.labels("/v1/models", "model_not_found").inc()
            err = ApiError(404, f"model {model_id!r} is not served here", code="model_not_found", param="model")
            return JSONResponse(err.body(), status_code=404)
        return m.card()

    @app.get("/health")
    async def health():
        body = {
            "status": "draining" if srv.draining else "ok",
            "uptime_s": round(time.time() - srv.started, 1),
            "inflight": srv.inflight,
            "models": {n: {"family": m.family, "variant": m.variant, "capabilities": m.capabilities,
                           "queue": {c: b.depth for c, b in m.batchers.items()}} for n, m in srv.models.items()},
        }
        return JSONResponse(body, status_code=503 if srv.draining else 200)

    @app.get("/metrics")
    async def metrics():
        pc = srv.metrics.pc
        return Response(pc.generate_latest(srv.metrics.registry), media_type=pc.CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, server=srv)
    return app



class _Named:
    """A batcher call and what its items are called in the request (for error messages)."""

    __slots__ = ("coro", "names", "code")

    def __init__(self, coro, names: list[str], code: str):
        self.coro, self.names, self.code = coro, names, code


def _named(coro, names: list[str], code: str = "invalid_image") -> _Named:
    return _Named(coro, names, code)


async def _gather(jobs: list[_Named]) -> list:
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
