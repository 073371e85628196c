"""The OpenAI-compatible surface: ``/v1/embeddings``, ``/v1/chat/completions``, ``/v1/models``.

Each route reads its request, calls the served model and returns a body from :mod:`.responses`.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
from fastapi import APIRouter, Request

from ...common.capabilities import Capability, names
from ...errors import InputError
from ..pipelines import families_that
from ..scoring import l2_normalize
from .config import ServeConfig
from .errors import ApiError, FieldError, as_api_error
from .inputs import ImageRef, classify_input
from .model import ServedModel
from .responses import answer_usage, chat_completion, completion_head, embedding_list, model_list
from .routing import ERRORS_DOC, JSONResponse, Named, event_stream, gather, post_route, served
from .schemas import RESPONSE_MODELS
from .state import ServerState
from .streaming import TextSink, chat_events


def openai_routes(srv: ServerState, schemas: SimpleNamespace) -> APIRouter:
    """The routes, validating requests with ``schemas`` (this server's limits: schemas.request_models)."""
    router = APIRouter()
    cfg = srv.cfg

    @post_route(router, srv, "/v1/embeddings", schemas.embeddings, RESPONSE_MODELS.embeddings)
    async def embeddings(request: Request, req):
        m = served(srv, request, req.model)
        (t_idx, texts), (i_idx, images) = _texts_and_images(req.input, m, cfg)
        request.state.items = len(t_idx) + len(i_idx)
        state = request.scope["state"]
        jobs = []
        if texts:
            jobs.append(Named(m.embed_texts(texts, state), [f"input[{i}]" for i in t_idx], "invalid_input"))
        if images:
            jobs.append(Named(m.embed_images(images, state), [f"input[{i}]" for i in i_idx]))
        results = await gather(jobs)
        text_out = results[0] if texts else []
        image_out = results[-1] if images else []
        vecs: list[np.ndarray] = [None] * (len(t_idx) + len(i_idx))  # type: ignore[list-item]
        for i, (v, _) in zip(t_idx, text_out):
            vecs[i] = v
        for i, v in zip(i_idx, image_out):
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
        return JSONResponse(
            embedding_list(
                m.name,
                vecs,
                as_base64=req.encoding_format == "base64",
                tokens=sum(n for _, n in text_out),
                images=len(images),
            )
        )

    @post_route(router, srv, "/v1/chat/completions", schemas.chat, RESPONSE_MODELS.chat)
    async def chat_completions(request: Request, req):
        m = served(srv, request, req.model)
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
            return await _vlm_chat(srv, request, req, m, mnt)
        return await _answer(srv, request, req, m, mnt)

    @router.get("/v1/models", response_model=RESPONSE_MODELS.models)
    async def list_models():
        return model_list([m.card() for m in srv.models.values()])

    @router.get("/v1/models/{model_id}", response_model=RESPONSE_MODELS.model, responses={404: ERRORS_DOC[404]})
    async def get_model(model_id: str):
        m = srv.models.get(model_id)
        if m is None:
            srv.metrics.errors.labels("/v1/models", "model_not_found").inc()
            err = ApiError(404, f"model {model_id!r} is not served here", code="model_not_found", param="model")
            return JSONResponse(err.body(), status_code=404)
        return m.card()

    return router


def _texts_and_images(
    given: str | list[str], m: ServedModel, cfg: ServeConfig
) -> tuple[tuple[list[int], list[str]], tuple[list[int], list[ImageRef]]]:
    """``input`` sorted into ((indices, texts), (indices, images)), each item checked against the model."""
    inputs = [given] if isinstance(given, str) else given
    texts, t_idx, images, i_idx = [], [], [], []
    for i, s in enumerate(inputs):
        where = f"input[{i}]" if isinstance(given, list) else "input"
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
    return (t_idx, texts), (i_idx, images)


async def _answer(srv: ServerState, request: Request, req, m: ServedModel, mnt: int | None):
    """A VQA model: one question about one image."""
    question, q_where, ref, img_where = req.turn()
    try:
        prompt_tokens = len(m.pipe.question_ids(question))  # a bad question is a 400 before any stream starts
    except InputError as exc:
        raise ApiError(400, f"{q_where}: {exc}", code="invalid_value", param=q_where) from None
    request.state.items = 1
    state = request.scope["state"]
    (images,) = await gather([Named(m.decode_images([ref]), [img_where])])
    return await _completion(
        srv,
        req,
        m,
        lambda a: answer_usage(prompt_tokens, a),
        "answer",
        [q_where],
        lambda sink: m.answer_images(images, [question], mnt, state, [sink] if sink else None),
    )


async def _vlm_chat(srv: ServerState, request: Request, req, m: ServedModel, mnt: int | None):
    """A VLM: the request's whole conversation rendered and run (no state kept between requests)."""
    history, h_imgs, text, t_imgs = req.conversation()
    refs = h_imgs + t_imgs
    request.state.items = 1
    state = request.scope["state"]
    decoded = (await gather([Named(m.decode_images([r for r, _ in refs]), [w for _, w in refs])]))[0] if refs else []
    opts = {
        "max_new_tokens": mnt or min(m.max_new_tokens, 128),
        "temperature": float(req.temperature or 0.0),
        "top_p": float(req.top_p if req.top_p is not None else 1.0),
        "seed": req.seed,
    }
    turn = {"role": "user", "content": [{"type": "image"}] * len(t_imgs) + [{"type": "text", "text": text}]}
    try:  # the prompt's tokens, for usage (a bad conversation is a 400 here)
        prompt_tokens = len(m.pipe.prompt_ids(history + [turn], m.pipe.grids(decoded)))
    except InputError as exc:
        raise ApiError(400, f"messages: {exc}", code="invalid_value", param="messages") from None
    room = int(m.pipe.generation.get("max_positions") or 0)
    if room and prompt_tokens + opts["max_new_tokens"] > room:
        raise ApiError(
            400,
            f"messages: the conversation is {prompt_tokens} tokens and {opts['max_new_tokens']} new ones "
            f"were asked for; model {m.name!r} holds {room}",
            code="context_length_exceeded",
            param="messages",
        )
    h_dec, t_dec = decoded[: len(h_imgs)], decoded[len(h_imgs) :]
    return await _completion(
        srv,
        req,
        m,
        lambda a: answer_usage(prompt_tokens, a, cached=True),
        "chat",
        ["messages"],
        lambda sink: m.chat(history, h_dec, text, t_dec, opts, state, sink),
    )


async def _completion(srv: ServerState, req, m: ServedModel, usage, kind: str, where: list[str], run):
    """One chat completion: ``run(sink)`` -> [Answer]; streamed as chunks, or one JSON body."""
    head = completion_head(m.name)
    if req.stream:
        queue: asyncio.Queue = asyncio.Queue()
        sink = TextSink(0, queue, asyncio.get_running_loop())
        task = asyncio.ensure_future(run(sink))
        include = bool(req.stream_options and req.stream_options.include_usage)

        def done(a):
            srv.metrics.items.labels(m.name, kind).inc()
            return usage(a) if include else None

        return event_stream(
            chat_events(task, queue, sink, head, lambda exc: as_api_error(exc, srv.cfg.timeout_s).body(), done)
        )
    (answers,) = await gather([Named(run(None), where, "invalid_value")])
    a = answers[0]
    srv.metrics.items.labels(m.name, kind).inc()
    return JSONResponse(chat_completion(head, a, usage(a)))
