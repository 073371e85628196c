"""`mmdeploy serve`: an OpenAI-compatible, dynamically batched HTTP server for bundles.

    from mmdeploy.runtimes.server import create_app
    app = create_app({"clip": "out/clip", "cap": "out/cap"}, max_batch=32, api_key="secret")
    # uvicorn.run(app, host="127.0.0.1", port=8000)   or   mmdeploy serve out/clip out/cap

Routes (errors are always ``{"error": {"message", "type", "code", "param"}}`` with a 4xx
status for anything the client caused):

- ``POST /v1/embeddings``: OpenAI embeddings. ``input`` is a string or a list of strings; a
  string that is a ``data:`` URL, or base64 whose bytes start like an image (PNG, JPEG, GIF,
  WebP, BMP, TIFF, ICO, AVIF, PPM), is an image, anything else is text (with
  ``allow_local_paths``, ``file://`` URLs and absolute paths to image files are images
  too). ``encoding_format`` ``float`` (default) or ``base64`` (little-endian float32),
  optional ``dimensions`` (truncate + renormalise). Embeddings are L2-normalised, exactly
  as the pipeline's ``embed_images`` / ``embed_texts`` return them.
- ``POST /v1/classify``: ``{model, image | images, labels, template}`` zero-shot, as
  ``ClipPipeline.classify``; label embeddings are cached per model.
- ``POST /v1/caption``: ``{model, image | images, max_new_tokens, num_beams}`` for any
  pipeline with ``.caption(images, max_new_tokens=, num_beams=)``.
- ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``, ``GET /metrics``
  (Prometheus text format).

Requests for the same model and component are batched (:mod:`.batching`): images are
decoded and preprocessed in a thread pool (per request, so a bad image fails only its own
request), then queued; inference runs in the batcher's worker thread. Nothing heavy runs
on the event loop. Limits: body size (413), items per request, image pixels (checked from
the header, before decoding), text length, per-request timeout (504), bounded queues
(503 + Retry-After). Logs are JSON lines (``configure_logging``); SIGTERM/SIGINT stop
accepting connections, finish in-flight requests, then drain the batch queues.

FastAPI, uvicorn and prometheus-client are imported inside the functions that need them
(``MissingExtraError`` naming the ``serve`` extra when absent), so importing this module
costs nothing. No torch here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import itertools
import ipaddress
import json
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError, require
from .batching import Batcher, ItemError, QueueFullError, ShuttingDownError
from .generate import GenerationConfig, max_new_tokens_limit
from .images import decode_image_data, load_image
from .scoring import l2_normalize
from .tokenize import bad_unicode_at

__all__ = ["ApiError", "ServeConfig", "create_app", "parse_bundle_args", "run_server", "JsonFormatter"]

log = logging.getLogger("mmdeploy.serve")

ROUTES = ("/v1/embeddings", "/v1/classify", "/v1/caption", "/v1/models", "/health", "/metrics")
INFERENCE_ROUTES = frozenset({"/v1/embeddings", "/v1/classify", "/v1/caption"})
OPEN_ROUTES = frozenset({"/health"})  # answered without the API key (liveness probes)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".ico", ".avif", ".tga")


@dataclass(frozen=True)
class ServeConfig:
    """Batching, limits and security of one server (every field has a safe default)."""

    max_batch: int = 32  # items per inference batch
    max_wait_ms: float = 5.0  # longest a batch waits for company (only while more requests are arriving)
    max_queue: int = 1024  # items queued per (model, component) before 503 + Retry-After
    max_body_bytes: int = 32 * 1024 * 1024
    max_items: int = 256  # inputs / images per request
    max_labels: int = 1024  # labels per classify request
    max_pixels: int = 20_000_000  # per image, checked from the header before decoding
    max_text_chars: int = 65_536  # per text input
    max_new_tokens: int = 256  # upper bound a caption request may ask for
    max_beams: int = 8
    timeout_s: float = 60.0  # per request, from headers read to response
    api_key: str | None = None
    allow_local_paths: bool = False
    label_cache_size: int = 4096  # cached label embeddings per model
    warmup: bool = True  # one tiny batch per component at startup

    def __post_init__(self):
        for f in ("max_batch", "max_queue", "max_body_bytes", "max_items", "max_labels", "max_pixels",
                  "max_text_chars", "max_new_tokens", "max_beams"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{f} must be a positive integer, got {v!r}")
        if self.max_wait_ms < 0:
            raise InputError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.timeout_s <= 0:
            raise InputError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("api_key is empty")


class ApiError(Exception):
    """An HTTP error with an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


# -- input parsing (event loop: cheap checks only; decoding happens in the workers) --------




_B64_HEAD = re.compile(r"[A-Za-z0-9+/_\-]{16,}")


def _image_magic(head: bytes) -> bool:
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return True
    if head[:4] == b"\x00\x00\x01\x00":  # ICO
        return True
    if head[:2] == b"BM" and len(head) >= 18:  # BMP: reserved zeros + a known DIB header size
        return head[6:10] == b"\x00\x00\x00\x00" and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
    return len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n"


def looks_like_base64_image(s: str) -> bool:
    """True when ``s`` starts like base64 of an image file (checks 24 decoded bytes)."""
    head = s[:40].replace("\r", "").replace("\n", "")[:32]
    if len(head) < 16 or not _B64_HEAD.fullmatch(head):
        return False
    head = head[: len(head) // 4 * 4].replace("-", "+").replace("_", "/")
    try:
        return _image_magic(base64.b64decode(head, validate=True))
    except (binascii.Error, ValueError):
        return False


@dataclass(frozen=True)
class ImageRef:
    """An image as the client sent it: ``kind`` 'data' (data URL or base64) or 'path'."""

    kind: str
    value: str


def _local_path(s: str, allow: bool, where: str) -> ImageRef | None:
    if s[:7].lower() == "file://":
        if not allow:
            raise ApiError(400, f"{where}: local paths are disabled on this server (start it with --allow-local-paths)",
                           code="local_paths_disabled", param=where)
        return ImageRef("path", s[7:])
    if allow and os.path.isabs(s) and s.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(s):
        return ImageRef("path", s)
    return None


def image_field(value: Any, where: str, allow_local_paths: bool) -> ImageRef:
    """A field that must be an image: data URL, base64 or (opt-in) a local path."""
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a string (a data URL or base64), got {_json_type(value)}",
                       code="invalid_type", param=where)
    s = value.strip()
    if not s:
        raise ApiError(400, f"{where} is empty", code="invalid_image", param=where)
    if s[:5].lower() == "data:":
        return ImageRef("data", s)
    if s[:7].lower() in ("http://", "https:/"):
        raise ApiError(400, f"{where}: this server does not fetch URLs; send the image as a data URL or base64",
                       code="invalid_image", param=where)
    ref = _local_path(s, allow_local_paths, where)
    if ref is not None:
        return ref
    if allow_local_paths and not looks_like_base64_image(s) and ("/" in s or os.sep in s or s.lower().endswith(IMAGE_SUFFIXES)):
        return ImageRef("path", s)  # load_image says "image file not found" when it is not there
    return ImageRef("data", s)


def classify_input(s: str, allow_local_paths: bool, where: str) -> ImageRef | None:
    """An embeddings input: an ImageRef for an image, None for text."""
    if s[:5].lower() == "data:":
        return ImageRef("data", s.strip())
    ref = _local_path(s, allow_local_paths, where)
    if ref is not None:
        return ref
    if looks_like_base64_image(s):
        return ImageRef("data", s.strip())
    return None


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _check_text(s: str, where: str) -> None:
    """Text the tokenizer can take, checked before it joins a batch: JSON allows lone surrogates."""
    if (at := bad_unicode_at(s)) is not None:
        raise ApiError(400, f"{where} is not valid Unicode text (a lone surrogate at character {at})",
                       code="invalid_text", param=where)


def _opt_int(body: dict, key: str, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ApiError(400, f"{key} must be an integer, got {_json_type(v)}", code="invalid_type", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {v}", code="invalid_value", param=key)
    return v


def _images_of(body: dict, cfg: ServeConfig) -> list[ImageRef]:
    has_one, has_many = body.get("image") is not None, body.get("images") is not None
    if has_one == has_many:
        raise ApiError(400, "give either 'image' (one image) or 'images' (a list)", code="missing_image", param="image")
    if has_one:
        return [image_field(body["image"], "image", cfg.allow_local_paths)]
    imgs = body["images"]
    if isinstance(imgs, str):
        imgs = [imgs]
    if not isinstance(imgs, list):
        raise ApiError(400, f"images must be a list of strings, got {_json_type(imgs)}", code="invalid_type", param="images")
    if not imgs:
        raise ApiError(400, "images is empty", code="empty_input", param="images")
    if len(imgs) > cfg.max_items:
        raise ApiError(400, f"too many images: {len(imgs)} (this server takes at most {cfg.max_items} per request)",
                       code="too_many_items", param="images")
    return [image_field(v, f"images[{i}]", cfg.allow_local_paths) for i, v in enumerate(imgs)]


# -- one served model -------------------------------------------------------------------------


class ServedModel:
    """A loaded pipeline, its batchers and its label cache. Capabilities by duck typing."""

    def __init__(self, name: str, pipeline: Any, cfg: ServeConfig, server: "_Server"):
        self.name, self.pipe, self.cfg, self.server = name, pipeline, cfg, server
        bundle = getattr(pipeline, "bundle", None)
        self.family = getattr(bundle, "family", None) or type(pipeline).__name__
        self.variant = getattr(pipeline, "variant", None)
        self.has_vision = callable(getattr(pipeline, "run_vision", None)) and getattr(pipeline, "preprocess", None) is not None
        self.has_text = callable(getattr(pipeline, "run_text", None)) and callable(getattr(pipeline, "text_inputs", None))
        self.has_caption = callable(getattr(pipeline, "caption", None))
        # the most new tokens a request may ask for: the server's cap, within the position table
        gen = getattr(pipeline, "generation", None)
        room = max_new_tokens_limit(gen) if isinstance(gen, GenerationConfig) else None
        self.max_new_tokens = min(cfg.max_new_tokens, room) if room else cfg.max_new_tokens
        # the family's own scoring rule (CLIP softmax, SigLIP sigmoid with bias, ...), never a copy here
        self.can_classify = self.has_vision and self.has_text and callable(getattr(pipeline, "scores", None))
        self.batchers: dict[str, Batcher] = {}
        for comp, fn, ok in (("vision", self._run_vision, self.has_vision), ("text", self._run_text, self.has_text),
                             ("caption", self._run_caption, self.has_caption)):
            if ok:
                self.batchers[comp] = Batcher(
                    f"{name}/{comp}", fn, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                    max_queue=cfg.max_queue, arrivals=server.arrivals, on_batch=server.metrics.batch_hook(name, comp),
                )
        self._labels: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def capabilities(self) -> list[str]:
        caps = []
        if self.has_text:
            caps.append("text-embeddings")
        if self.has_vision:
            caps.append("image-embeddings")
        if self.can_classify:
            caps.append("classify")
        if self.has_caption:
            caps.append("caption")
        return caps

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "mmdeploy",
                "family": self.family, "variant": self.variant, "capabilities": self.capabilities,
                **({"max_new_tokens": self.max_new_tokens} if self.has_caption else {})}

    # -- worker-thread functions (one outcome per item; an exception instance fails that item) --

    def _load(self, ref: ImageRef):
        try:
            if ref.kind == "path":
                return load_image(ref.value, max_pixels=self.cfg.max_pixels)
            return decode_image_data(ref.value, max_pixels=self.cfg.max_pixels)
        except InputError:
            raise
        except MemoryError:
            raise InputError("image too large to decode in memory") from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is bad input
            raise InputError(f"cannot read image: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None

    def _decode_all(self, refs: list[ImageRef], preprocess: bool) -> list:
        """Decode thread pool: images -> preprocessed arrays (or RGB images); ItemError on the first bad one."""
        pre = self.pipe.preprocess if preprocess else None
        out = []
        for i, ref in enumerate(refs):
            try:
                im = self._load(ref)
                out.append(pre.process_one(im) if pre is not None else im)
            except InputError as exc:
                raise ItemError(i, exc) from None
            except MemoryError:
                raise ItemError(i, InputError("image too large to process in memory")) from None
        return out

    def _run_vision(self, arrays: list[np.ndarray]) -> list:
        out: list[Any] = [None] * len(arrays)
        by_shape: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape, []).append(i)
        mb = self.cfg.max_batch
        for idx in by_shape.values():
            for k in range(0, len(idx), mb):
                chunk = idx[k : k + mb]
                x = np.ascontiguousarray(np.stack([arrays[i] for i in chunk]).transpose(0, 3, 1, 2))
                emb = l2_normalize(np.asarray(self.pipe.run_vision({"pixel_values": x}), dtype=np.float32))
                for i, v in zip(chunk, emb):
                    out[i] = v
        return out

    def _run_text(self, texts: list[str]) -> list:
        out: list[Any] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # little padding per chunk
        mb = self.cfg.max_batch
        for k in range(0, len(order), mb):
            idx = order[k : k + mb]
            try:
                got = self._embed_text_chunk([texts[i] for i in idx])
            except Exception:  # noqa: BLE001 - one bad item must not fail the others: retry each alone
                got = []
                for i in idx:
                    try:
                        got += self._embed_text_chunk([texts[i]])
                    except Exception as exc:  # noqa: BLE001 - fails this item only
                        got.append(exc)
            for i, r in zip(idx, got):
                out[i] = r
        return out

    def _embed_text_chunk(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        feeds = self.pipe.text_inputs(texts)
        emb = l2_normalize(np.asarray(self.pipe.run_text(feeds), dtype=np.float32))
        mask = feeds.get("attention_mask")
        return [(v, int(mask[j].sum()) if mask is not None else 0) for j, v in enumerate(emb)]

    def _run_caption(self, items: list[tuple[Any, int | None, int | None]]) -> list:
        out: list[Any] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (_, mnt, beams) in enumerate(items):
            groups.setdefault((mnt, beams), []).append(i)
        mb = self.cfg.max_batch
        for (mnt, beams), idx in groups.items():
            for k in range(0, len(idx), mb):
                chunk = idx[k : k + mb]
                try:
                    caps = self.pipe.caption([items[i][0] for i in chunk], max_new_tokens=mnt, num_beams=beams)
                    caps = [caps] if isinstance(caps, str) else list(caps)
                    if len(caps) != len(chunk):
                        raise RuntimeError(f"caption returned {len(caps)} captions for {len(chunk)} images")
                except Exception as exc:  # noqa: BLE001 - fails this group only
                    caps = [exc] * len(chunk)
                for i, c in zip(chunk, caps):
                    out[i] = c if isinstance(c, BaseException) else _caption_text(c)
        return out

    # -- async API used by the routes ----------------------------------------------------------

    async def _decode(self, refs: list[ImageRef], preprocess: bool) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.server.decode_pool, self._decode_all, refs, preprocess)

    async def embed_texts(self, texts: list[str], state: dict | None = None) -> list[tuple[np.ndarray, int]]:
        self.server.arrived(state)
        return await self.batchers["text"].submit(texts)

    async def embed_images(self, refs: list[ImageRef], state: dict | None = None) -> list[np.ndarray]:
        arrays = await self._decode(refs, preprocess=True)
        self.server.arrived(state)
        return await self.batchers["vision"].submit(arrays)

    async def label_embeddings(self, prompts: list[str], state: dict | None = None) -> np.ndarray:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._labels))
        if missing:
            got = await self.embed_texts(missing, state)
            for p, (v, _) in zip(missing, got):
                self._labels[p] = v
        vecs = []
        for p in prompts:
            v = self._labels.get(p)
            if v is None:  # evicted meanwhile by a concurrent request: recompute
                v = (await self.embed_texts([p]))[0][0]
            else:
                self._labels.move_to_end(p)
            vecs.append(v)
        while len(self._labels) > self.cfg.label_cache_size:
            self._labels.popitem(last=False)
        return np.stack(vecs)

    async def caption(self, refs: list[ImageRef], mnt: int | None, beams: int | None, state: dict | None = None) -> list[str]:
        images = await self._decode(refs, preprocess=False)
        self.server.arrived(state)
        return await self.batchers["caption"].submit([(im, mnt, beams) for im in images])

    async def warmup(self) -> None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, "PNG")
        ref = ImageRef("data", base64.b64encode(buf.getvalue()).decode())
        if self.has_vision:
            await self.embed_images([ref])
        if self.has_text:
            await self.embed_texts(["warm-up"])

    async def close(self, drain: bool = True) -> None:
        await asyncio.gather(*(b.close(drain=drain) for b in self.batchers.values()))


def _caption_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):
        for k in ("caption", "text", "generated_text"):
            if isinstance(c.get(k), str):
                return c[k]
    return str(c)


# -- metrics --------------------------------------------------------------------------------


class _Metrics:
    def __init__(self):
        pc = require("prometheus_client", "serve")
        self.pc = pc
        r = self.registry = pc.CollectorRegistry()
        pc.ProcessCollector(registry=r)
        self.requests = pc.Counter("mmdeploy_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.errors = pc.Counter("mmdeploy_errors", "Error responses by route and error code.", ["route", "code"], registry=r)
        self.latency = pc.Histogram(
            "mmdeploy_request_latency_seconds", "Request latency, headers read to response sent.", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.batch_size = pc.Histogram(
            "mmdeploy_batch_size", "Items per inference batch.", ["model", "component"], registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.batch_latency = pc.Histogram(
            "mmdeploy_batch_latency_seconds", "Time to decode, preprocess and run one batch.", ["model", "component"],
            registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.queue_wait = pc.Histogram(
            "mmdeploy_queue_wait_seconds", "Time a request waited in the batch queue.", ["model", "component"], registry=r,
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.queue_depth = pc.Gauge("mmdeploy_queue_depth", "Items waiting in a batch queue.", ["model", "component"], registry=r)
        self.inflight = pc.Gauge("mmdeploy_inflight_requests", "HTTP requests being handled.", registry=r)
        self.items = pc.Counter("mmdeploy_items", "Items processed by model and kind.", ["model", "kind"], registry=r)

    def batch_hook(self, model: str, comp: str):
        size, lat, wait = (self.batch_size.labels(model, comp), self.batch_latency.labels(model, comp),
                           self.queue_wait.labels(model, comp))

        def hook(n: int, seconds: float, waits: list[float]) -> None:
            size.observe(n)
            lat.observe(seconds)
            for w in waits:
                wait.observe(w)

        return hook

    def watch_queue(self, model: str, comp: str, batcher: Batcher) -> None:
        self.queue_depth.labels(model, comp).set_function(lambda: batcher.depth)


# -- the server state, middleware and routes ------------------------------------------------------


class _Server:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = _Metrics()
        self.models: dict[str, ServedModel] = {}
        self.arriving = 0  # inference requests read but not yet queued
        self.inflight = 0
        self.draining = False
        self.started = time.time()
        # image decoding + preprocessing: off the event loop, beside the inference threads
        self.decode_pool = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)),
                                              thread_name_prefix="decode")

    def arrivals(self) -> int:
        return self.arriving

    def arrived(self, state: dict | None) -> None:
        """The request reached its batcher (or left): it no longer counts as arriving."""
        if state is not None and state.get("arriving"):
            state["arriving"] = False
            self.arriving -= 1
            if self.arriving == 0:
                for m in self.models.values():
                    for b in m.batchers.values():
                        b.poke()

    def model(self, body: dict) -> ServedModel:
        name = body.get("model")
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise ApiError(400, f"give 'model': one of {', '.join(self.models)}", code="missing_model", param="model")
        if not isinstance(name, str):
            raise ApiError(400, f"model must be a string, got {_json_type(name)}", code="invalid_type", param="model")
        m = self.models.get(name)
        if m is None:
            raise ApiError(404, f"model {name!r} is not served here (served: {', '.join(self.models)})",
                           code="model_not_found", param="model")
        return m


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


_RID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_timeout = getattr(asyncio, "timeout", None)  # 3.11+: no extra task per request
_ids = itertools.count(1)
_ID_PREFIX = uuid.uuid4().hex[:8]


class _Guard:
    """Pure ASGI middleware: request id, API key, body-size limit, metrics and the access log."""

    def __init__(self, app, server: _Server):
        self.app, self.srv = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        srv, cfg = self.srv, self.srv.cfg
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in ROUTES else ("/v1/models" if path.startswith("/v1/models/") else "other")
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _RID.fullmatch(rid):
            rid = f"{_ID_PREFIX}-{next(_ids):x}"
        state = scope.setdefault("state", {})
        state["request_id"], state["route"] = rid, route
        counted = scope["method"] == "POST" and route in INFERENCE_ROUTES
        state["arriving"] = counted
        if counted:
            srv.arriving += 1
        srv.inflight += 1
        srv.metrics.inflight.inc()
        status = [0]

        async def send_(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        async def reject(code: int, message: str, err_code: str, type_: str = "invalid_request_error", extra=()):
            state["error"] = err_code
            srv.metrics.errors.labels(route, err_code).inc()
            await _send_json(send_, code, ApiError(code, message, type=type_, code=err_code).body(), extra)

        try:
            if cfg.api_key and path not in OPEN_ROUTES:
                auth = headers.get(b"authorization", b"")
                scheme, _, token = auth.partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), cfg.api_key.encode()):
                    return await reject(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                        "invalid_api_key", "authentication_error", [(b"www-authenticate", b"Bearer")])
            if scope["method"] in ("POST", "PUT", "PATCH"):
                limit = cfg.max_body_bytes
                too_big = f"request body larger than {limit:,} bytes"
                cl = headers.get(b"content-length")
                if cl is not None:
                    try:
                        if int(cl) > limit:
                            return await reject(413, too_big, "body_too_large")
                    except ValueError:
                        return await reject(400, "bad Content-Length header", "bad_request")
                chunks, size, more = [], 0, True
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    chunk = msg.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return await reject(413, too_big, "body_too_large")
                    chunks.append(chunk)
                    more = msg.get("more_body", False)
                body = b"".join(chunks)
                replayed = False

                async def receive_():
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, receive_, send_)
            return await self.app(scope, receive, send_)
        finally:
            srv.arrived(state)
            srv.inflight -= 1
            m = srv.metrics
            m.inflight.dec()
            elapsed = time.perf_counter() - start
            m.requests.labels(route, str(status[0])).inc()
            m.latency.labels(route).observe(elapsed)
            if (route not in ("/metrics", "/health") or status[0] >= 400) and log.isEnabledFor(logging.INFO):
                fields_ = {"event": "request", "request_id": rid, "method": scope["method"], "path": path,
                           "status": status[0], "ms": round(elapsed * 1000, 2)}
                for k in ("model", "items", "error"):
                    if k in state:
                        fields_[k] = state[k]
                client = scope.get("client")
                if client:
                    fields_["client"] = client[0]
                log.info("request", extra={"fields": fields_})


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
    srv = _Server(cfg)
    from .select import load

    for name, src in bundles.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
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

    def as_api_error(exc: BaseException) -> ApiError:
        if isinstance(exc, ItemError):
            exc = exc.error
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, InputError):
            return ApiError(400, str(exc), code="invalid_input")
        if isinstance(exc, QueueFullError):
            return ApiError(503, str(exc), type="server_overloaded", code="queue_full",
                            headers={"Retry-After": str(max(1, round(exc.retry_after)))})
        if isinstance(exc, ShuttingDownError):
            return ApiError(503, str(exc), type="server_overloaded", code="shutting_down", headers={"Retry-After": "1"})
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return ApiError(504, f"request took longer than {cfg.timeout_s:g} s", type="timeout", code="timeout")
        log.error("internal error", exc_info=exc, extra={"fields": {"event": "internal_error", "error": f"{type(exc).__name__}: {exc}"}})
        return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error", code="internal_error")

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
                    raise ApiError(400, f"body must be a JSON object, got {_json_type(data)}", code="invalid_json")
                if _timeout is not None:
                    async with _timeout(cfg.timeout_s):
                        return await fn(request, data)
                return await asyncio.wait_for(fn(request, data), cfg.timeout_s)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
                return fail(request, as_api_error(exc))

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
        return fail(request, as_api_error(exc))

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
            raise ApiError(400, f"input must be a string or a list of strings, got {_json_type(raw)}",
                           code="invalid_type", param="input")
        if not inputs:
            raise ApiError(400, "input is empty", code="empty_input", param="input")
        if len(inputs) > cfg.max_items:
            raise ApiError(400, f"too many inputs: {len(inputs)} (this server takes at most {cfg.max_items} per request)",
                           code="too_many_items", param="input")
        for i, s in enumerate(inputs):
            if not isinstance(s, str):
                what = "token arrays are not supported, send text" if isinstance(s, (int, list)) else f"got {_json_type(s)}"
                raise ApiError(400, f"input[{i}] must be a string (text, or an image as a data URL or base64): {what}",
                               code="invalid_type", param=f"input[{i}]")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}", code="invalid_value",
                           param="encoding_format")
        dims = _opt_int(body, "dimensions", 1, 1 << 16)
        texts, t_idx, images, i_idx = [], [], [], []
        for i, s in enumerate(inputs):
            where = f"input[{i}]" if isinstance(raw, list) else "input"
            ref = classify_input(s, cfg.allow_local_paths, where)
            if ref is None:
                if len(s) > cfg.max_text_chars:
                    raise ApiError(400, f"{where} is {len(s):,} characters long (limit {cfg.max_text_chars:,})",
                                   code="text_too_long", param=where)
                _check_text(s, where)
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
        refs = _images_of(body, cfg)
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
            _check_text(l, f"labels[{i}]")
        template = body.get("template")
        template = "{}" if template is None else template
        if not isinstance(template, str):
            raise ApiError(400, f"template must be a string, got {_json_type(template)}", code="invalid_type", param="template")
        _check_text(template, "template")
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
        refs = _images_of(body, cfg)
        mnt = _opt_int(body, "max_new_tokens", 1, m.max_new_tokens)
        beams = _opt_int(body, "num_beams", 1, cfg.max_beams)
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

    app.add_middleware(_Guard, server=srv)
    return app


_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


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


# -- command-line entry point ------------------------------------------------------------------


def parse_bundle_args(args: list[str]) -> dict[str, Path]:
    """``["out/clip", "cap=out/blip"]`` -> ``{"clip": Path("out/clip"), "cap": Path("out/blip")}``."""
    out: dict[str, Path] = {}
    for a in args:
        name, eq, path = a.partition("=")
        if not eq or os.path.exists(a):
            path, name = a, Path(a).resolve().name
        if not _NAME.fullmatch(name):
            raise InputError(f"model name {name!r} (from {a!r}): use letters, digits and . _ - : only (or NAME=PATH)")
        if name in out:
            raise InputError(f"two bundles are named {name!r}: name them with NAME=PATH")
        out[name] = Path(path)
    if not out:
        raise InputError("give at least one bundle to serve")
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
             "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        d.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(bundles: list[str] | Mapping[str, Any], *, host: str = "127.0.0.1", port: int = 8000,
               config: ServeConfig | None = None, backend: str | None = None, precision: str | None = None,
               threads: int | None = None, log_level: str = "info", graceful_timeout_s: float = 30.0) -> None:
    """Load the bundles and serve until SIGINT/SIGTERM (in-flight requests are drained first)."""
    uvicorn = require("uvicorn", "serve")
    configure_logging(log_level)
    named = parse_bundle_args(list(bundles)) if not isinstance(bundles, Mapping) else dict(bundles)
    cfg = config or ServeConfig()
    if not _is_loopback(host) and not cfg.api_key:
        log.warning("serving on a non-loopback address without an API key", extra={"fields": {"event": "insecure", "host": host}})
    app = create_app(named, cfg, backend=backend, precision=precision, threads=threads)
    log.info("listening", extra={"fields": {"event": "listen", "url": f"http://{host}:{port}", "api_key": bool(cfg.api_key)}})
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, log_level=log_level,
                timeout_graceful_shutdown=graceful_timeout_s, lifespan="on")
