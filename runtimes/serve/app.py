"""The FastAPI app: routes stay thin (parse, hand to the served model, shape the answer)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from typing import Any

import numpy as np

from ...common.capabilities import Capability, names, needs
from ...errors import InputError, require
from ..pipelines import families_that
from ..scoring import l2_normalize
from .batching import ItemError
from .config import MODEL_NAME, ServeConfig
from .errors import ApiError, FieldError, as_api_error
from .inputs import classify_input
from .middleware import Guard
from .model import ServedModel
from .page import add_pages
from .state import ServerState
from .streaming import TextSink, caption_events, chat_events

log = logging.getLogger("mmdeploy.serve")
_timeout = getattr(asyncio, "timeout", None)  # 3.11+: no extra task per request


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
    orjson = require("orjson", "serve")
    from fastapi import Request
    from fastapi.responses import Response, StreamingResponse
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .schemas import RESPONSE_MODELS, request_models, validation_error

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
        pipe = (
            load(src, backend=backend, precision=precision, threads=threads)
            if isinstance(src, (str, os.PathLike))
            else src
        )
        m = ServedModel(name, pipe, cfg, srv)
        if not m.batchers:
            raise InputError(f"model {name!r} ({type(pipe).__name__}) has nothing this server can run")
        for comp, b in m.batchers.items():
            srv.metrics.watch_queue(name, comp, b)
        if m.has_chat:
            srv.metrics.watch_chat_cache(name, m)
        srv.models[name] = m

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

    def fail(request: Request, exc: ApiError):
        st = request.scope.setdefault("state", {})
        st["error"] = exc.code
        srv.metrics.errors.labels(st.get("route", "other"), exc.code or "error").inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)

    req_models = request_models(cfg)
    errors_doc = {
        s: {"model": RESPONSE_MODELS.error, "description": d}
        for s, d in (
            (400, "Bad input: the field is named in error.param"),
            (404, "Unknown model"),
            (413, "Body too large"),
            (503, "Overloaded or draining: retry after Retry-After seconds"),
            (504, "Took longer than the server's timeout"),
        )
    }

    def api(path: str, schema, response_model):
        """A POST route: JSON body validated by ``schema``, every failure one JSON error, a timeout."""

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
                    return fail(request, as_api_error(exc, cfg.timeout_s))

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
            app.post(path, response_model=response_model, responses=errors_doc, openapi_extra=body_doc)(route)
            return route

        return wrap

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return fail(request, ApiError(exc.status_code, msg, code=code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # pragma: no cover - routes catch everything
        return fail(request, as_api_error(exc, cfg.timeout_s))

    @api("/v1/embeddings", req_models.embeddings, RESPONSE_MODELS.embeddings)
    async def embeddings(request: Request, req):
        m = srv.model(req.model)
        request.state.model = m.name
        inputs = [req.input] if isinstance(req.input, str) else req.input
        texts, t_idx, images, i_idx = [], [], [], []
        for i, s in enumerate(inputs):
            where = f"input[{i}]" if isinstance(req.input, list) else "input"
            try:
                ref = classify_input(s, cfg.allow_local_paths)
            except FieldError as exc:
                raise ApiError(400, f"{where}: {exc}", code=exc.code, param=where) from None
            if ref is None:
                if len(s) > cfg.max_text_chars:  # here, not on the schema: an image's base64 is longer
                    raise ApiError(
                        400,
                        f"{where} is {len(s):,} characters long (limit {cfg.max_text_chars:,})",
                        code="text_too_long",
                        param=where,
                    )
                if not s.strip():  # as OpenAI: an empty input has no meaning, and would embed the bare specials
                    raise ApiError(400, f"{where} is empty", code="invalid_value", param=where)
                texts.append(s)
                t_idx.append(i)
            else:
                images.append(ref)
                i_idx.append(i)
        if texts and not m.has_text:
            raise ApiError(400, f"model {m.name!r} does not embed text", code="unsupported_input", param="input")
        if images and not m.has_vision:
            what = "images" if m.has_text else "anything"
            raise ApiError(
                400,
                f"model {m.name!r} does not embed {what} (input[{i_idx[0]}] is an image)",
                code="unsupported_input",
                param="input",
            )
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
        if req.dimensions is not None:
            d = vecs[0].shape[-1]
            if req.dimensions > d:
                raise ApiError(
                    400, f"dimensions {req.dimensions} > the model's {d}", code="invalid_value", param="dimensions"
                )
            vecs = [l2_normalize(v[: req.dimensions]) for v in vecs]
        b64 = req.encoding_format == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
                if b64
                else np.ascontiguousarray(v, np.float32),
            }
            for i, v in enumerate(vecs)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": m.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "images": len(images)},
            }
        )

    @api("/v1/classify", req_models.classify, RESPONSE_MODELS.classify)
    async def classify(request: Request, req):
        m = srv.model(req.model)
        request.state.model = m.name
        if not m.can_classify:
            raise ApiError(
                400,
                f"model {m.name!r} cannot classify: that needs {needs(Capability.CLASSIFY, families_that(Capability.CLASSIFY))}",
                code="unsupported_model",
                param="model",
            )
        refs = req.refs
        prompts = [req.template.format(label) for label in req.labels]
        request.state.items = len(refs)
        state = request.scope["state"]
        text, img = await _gather(
            [
                _named(m.label_embeddings(prompts, state), ["labels"], "invalid_input"),
                _named(m.embed_images(refs, state), req.names),
            ]
        )
        probs = m.pipe.scores(np.stack(img), text)
        srv.metrics.items.labels(m.name, "image").inc(len(refs))
        data = []
        for i, p in enumerate(probs):
            ranked = sorted(zip(req.labels, map(float, p)), key=lambda t: -t[1])
            data.append(
                {
                    "index": i,
                    "label": ranked[0][0],
                    "score": ranked[0][1],
                    "scores": [{"label": label, "score": s} for label, s in ranked],
                }
            )
        return JSONResponse({"object": "list", "model": m.name, "data": data})

    @api("/v1/caption", req_models.caption, RESPONSE_MODELS.caption)
    async def caption(request: Request, req):
        m = srv.model(req.model)
        request.state.model = m.name
        if not m.has_caption:
            raise ApiError(400, f"model {m.name!r} does not caption images", code="unsupported_model", param="model")
        if req.max_new_tokens is not None and req.max_new_tokens > m.max_new_tokens:
            raise ApiError(
                400,
                f"max_new_tokens must be between 1 and {m.max_new_tokens} for model {m.name!r}, "
                f"got {req.max_new_tokens}",
                code="invalid_value",
                param="max_new_tokens",
            )
        refs = req.refs
        request.state.items = len(refs)
        state = request.scope["state"]
        if req.stream:
            # bad images are a 400 before the stream starts; after that, errors are events
            (images,) = await _gather([_named(m.decode_images(refs), req.names)])
            queue: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            sinks = [TextSink(i, queue, loop) for i in range(len(images))]
            task = asyncio.ensure_future(m.caption_images(images, req.max_new_tokens, req.num_beams, state, sinks))
            events = caption_events(
                task,
                queue,
                sinks,
                lambda exc: as_api_error(exc, cfg.timeout_s).body(),
                srv.metrics.items.labels(m.name, "caption").inc,
            )
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            )
        (caps,) = await _gather([_named(m.caption(refs, req.max_new_tokens, req.num_beams, state), req.names)])
        srv.metrics.items.labels(m.name, "caption").inc(len(refs))
        return JSONResponse(
            {"object": "list", "model": m.name, "data": [{"index": i, "caption": c} for i, c in enumerate(caps)]}
        )

    @api("/v1/chat/completions", req_models.chat, RESPONSE_MODELS.chat)
    async def chat_completions(request: Request, req):
        m = srv.model(req.model)
        request.state.model = m.name
        if not (m.has_answer or m.has_chat):
            raise ApiError(
                400,
                f"model {m.name!r} does not chat about images (serve a bundle of "
                f"{names(families_that(Capability.ANSWER) + families_that(Capability.CHAT))})",
                code="unsupported_model",
                param="model",
            )
        mnt = req.new_tokens
        if mnt is not None and mnt > m.max_new_tokens:
            which = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
            raise ApiError(
                400,
                f"{which} must be between 1 and {m.max_new_tokens} for model {m.name!r}, got {mnt}",
                code="invalid_value",
                param=which,
            )
        if m.has_chat:
            return await vlm_chat(request, req, m, mnt)
        question, q_where, ref, img_where = req.turn()
        try:
            prompt_tokens = len(m.pipe.question_ids(question))  # a bad question is a 400 before any stream starts
        except InputError as exc:
            raise ApiError(400, f"{q_where}: {exc}", code="invalid_value", param=q_where) from None
        request.state.items = 1
        state = request.scope["state"]
        (images,) = await _gather([_named(m.decode_images([ref]), [img_where])])
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": m.name}

        def usage(a) -> dict:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": a.completion_tokens,
                "total_tokens": prompt_tokens + a.completion_tokens,
            }

        return await completion(
            req,
            m,
            head,
            usage,
            "answer",
            [q_where],
            lambda sink: m.answer_images(images, [question], mnt, state, [sink] if sink else None),
        )

    async def vlm_chat(request: Request, req, m: ServedModel, mnt: int | None):
        """A VLM: the request's whole conversation rendered and run (no state kept between requests)."""
        history, h_imgs, text, t_imgs = req.conversation()
        refs = h_imgs + t_imgs
        request.state.items = 1
        state = request.scope["state"]
        decoded = (
            (await _gather([_named(m.decode_images([r for r, _ in refs]), [w for _, w in refs])]))[0] if refs else []
        )
        opts = {
            "max_new_tokens": mnt or min(m.max_new_tokens, 128),
            "temperature": float(req.temperature or 0.0),
            "top_p": float(req.top_p if req.top_p is not None else 1.0),
            "seed": req.seed,
        }
        prompt = [0]

        def count() -> None:  # the prompt's tokens, for usage (a bad conversation is a 400 here)
            try:
                prompt[0] = len(
                    m.pipe.prompt_ids(
                        history
                        + [
                            {
                                "role": "user",
                                "content": [{"type": "image"}] * len(t_imgs) + [{"type": "text", "text": text}],
                            }
                        ],
                        m.pipe.grids(decoded),
                    )
                )
            except InputError as exc:
                raise ApiError(400, f"messages: {exc}", code="invalid_value", param="messages") from None
            room = int(m.pipe.generation.get("max_positions") or 0)
            if room and prompt[0] + opts["max_new_tokens"] > room:
                raise ApiError(
                    400,
                    f"messages: the conversation is {prompt[0]} tokens and {opts['max_new_tokens']} new ones "
                    f"were asked for; model {m.name!r} holds {room}",
                    code="context_length_exceeded",
                    param="messages",
                )

        count()
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": m.name}

        def usage(a):
            return {
                "prompt_tokens": prompt[0],
                "completion_tokens": a.completion_tokens,
                "total_tokens": prompt[0] + a.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": a.cached_tokens},
            }

        h_dec, t_dec = decoded[: len(h_imgs)], decoded[len(h_imgs) :]
        return await completion(
            req,
            m,
            head,
            usage,
            "chat",
            ["messages"],
            lambda sink: m.chat(history, h_dec, text, t_dec, opts, state, sink),
        )

    async def completion(req, m: ServedModel, head: dict, usage, kind: str, names: list[str], run):
        """One chat completion: ``run(sink)`` -> [Answer]; streamed as chunks, or one JSON body."""
        if req.stream:
            queue: asyncio.Queue = asyncio.Queue()
            sink = TextSink(0, queue, asyncio.get_running_loop())
            task = asyncio.ensure_future(run(sink))
            include = bool(req.stream_options and req.stream_options.include_usage)

            def done(a):
                srv.metrics.items.labels(m.name, kind).inc()
                return usage(a) if include else None

            events = chat_events(task, queue, sink, head, lambda exc: as_api_error(exc, cfg.timeout_s).body(), done)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            )
        (answers,) = await _gather([_named(run(None), names, "invalid_value")])
        a = answers[0]
        srv.metrics.items.labels(m.name, kind).inc()
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": a.text},
                        "logprobs": None,
                        "finish_reason": a.finish_reason,
                    }
                ],
                "usage": usage(a),
            }
        )

    @app.get("/v1/models", response_model=RESPONSE_MODELS.models)
    async def list_models():
        return {"object": "list", "data": [m.card() for m in srv.models.values()]}

    @app.get("/v1/models/{model_id}", response_model=RESPONSE_MODELS.model, responses={404: errors_doc[404]})
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
            "models": {
                n: {
                    "family": m.family,
                    "variant": m.variant,
                    "capabilities": m.capabilities,
                    "queue": {c: b.depth for c, b in m.batchers.items()},
                }
                for n, m in srv.models.items()
            },
        }
        return JSONResponse(body, status_code=503 if srv.draining else 200)

    @app.get("/metrics")
    async def metrics():
        pc = srv.metrics.pc
        return Response(pc.generate_latest(srv.metrics.registry), media_type=pc.CONTENT_TYPE_LATEST)

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
    add_pages(app)
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
