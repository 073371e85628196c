"""mmdeploy's own surface: ``/v1/classify``, ``/v1/caption``, ``/health`` and ``/metrics``.

Each route reads its request, calls the served model and returns a body from :mod:`.responses`.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...common.capabilities import Capability, needs
from ..pipelines import families_that
from .errors import ApiError, as_api_error
from .responses import caption_list, classification_list, health_report
from .routing import JSONResponse, Named, event_stream, gather, post_route, served
from .schemas import RESPONSE_MODELS
from .state import ServerState
from .streaming import TextSink, caption_events


def own_routes(srv: ServerState, schemas: SimpleNamespace) -> APIRouter:
    """The routes, validating requests with ``schemas`` (this server's limits: schemas.request_models)."""
    router = APIRouter()
    cfg = srv.cfg

    @post_route(router, srv, "/v1/classify", schemas.classify, RESPONSE_MODELS.classify)
    async def classify(request: Request, req):
        m = served(srv, request, req.model)
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
        text, img = await gather(
            [
                Named(m.label_embeddings(prompts, state), ["labels"], "invalid_input"),
                Named(m.embed_images(refs, state), req.names),
            ]
        )
        probs = m.pipe.scores(np.stack(img), text)
        srv.metrics.items.labels(m.name, "image").inc(len(refs))
        return JSONResponse(classification_list(m.name, req.labels, probs))

    @post_route(router, srv, "/v1/caption", schemas.caption, RESPONSE_MODELS.caption)
    async def caption(request: Request, req):
        m = served(srv, request, req.model)
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
            (images,) = await gather([Named(m.decode_images(refs), req.names)])
            queue: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            sinks = [TextSink(i, queue, loop) for i in range(len(images))]
            task = asyncio.ensure_future(m.caption_images(images, req.max_new_tokens, req.num_beams, state, sinks))
            return event_stream(
                caption_events(
                    task,
                    queue,
                    sinks,
                    lambda exc: as_api_error(exc, cfg.timeout_s).body(),
                    srv.metrics.items.labels(m.name, "caption").inc,
                )
            )
        (caps,) = await gather([Named(m.caption(refs, req.max_new_tokens, req.num_beams, state), req.names)])
        srv.metrics.items.labels(m.name, "caption").inc(len(refs))
        return JSONResponse(caption_list(m.name, caps))

    @router.get("/health")
    async def health():
        body, status = health_report(srv)
        return JSONResponse(body, status_code=status)

    @router.get("/metrics")
    async def metrics():
        pc = srv.metrics.pc
        return Response(pc.generate_latest(srv.metrics.registry), media_type=pc.CONTENT_TYPE_LATEST)

    return router
