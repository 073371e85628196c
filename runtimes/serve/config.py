"""Server settings: batching, limits and security (`ServeConfig`), and the route table."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import InputError

ROUTES = (
    "/v1/embeddings",
    "/v1/classify",
    "/v1/caption",
    "/v1/chat/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/",
    "/docs",
    "/openapi.json",
)
INFERENCE_ROUTES = frozenset({"/v1/embeddings", "/v1/classify", "/v1/caption", "/v1/chat/completions"})
# answered without the API key: liveness probes, and the static pages (their API calls carry the key)
OPEN_ROUTES = frozenset({"/health", "/", "/docs", "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/docs/assets/",)
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
    header_timeout_s: float = 10.0  # a connection must finish its request line + headers within this (slowloris)
    body_timeout_s: float = 30.0  # ... and its body within this after the headers (408 otherwise)
    drain_timeout_s: float = 30.0  # on SIGTERM: the longest in-flight requests get before the server stops
    api_key: str | None = None
    allow_local_paths: bool = False
    label_cache_size: int = 4096  # cached label embeddings per model
    chat_cache_mb: float = 512.0  # recent conversations kept per chat model: KV, image features, images (0: none)
    warmup: bool = True  # one tiny batch per component at startup

    def __post_init__(self):
        for f in (
            "max_batch",
            "max_queue",
            "max_body_bytes",
            "max_items",
            "max_labels",
            "max_pixels",
            "max_text_chars",
            "max_new_tokens",
            "max_beams",
        ):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{f} must be a positive integer, got {v!r}")
        if not 0 <= self.chat_cache_mb < float("inf"):
            raise InputError(f"chat_cache_mb must be >= 0, got {self.chat_cache_mb}")
        if not 0 <= self.max_wait_ms <= 60_000:  # (also refuses nan)
            raise InputError(f"max_wait_ms must be between 0 and 60000, got {self.max_wait_ms}")
        for f in ("timeout_s", "header_timeout_s", "body_timeout_s", "drain_timeout_s"):
            if not 0 < getattr(self, f) <= 86_400:
                raise InputError(f"{f} must be > 0 and at most a day (86400), got {getattr(self, f)}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("api_key is empty")


MODEL_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
