"""The serve package: an OpenAI-compatible, dynamically batched HTTP server for bundles.

    from mmdeploy.runtimes.serve import create_app
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

Modules, by concern: ``config`` (ServeConfig, routes), ``errors`` (the one error shape),
``inputs`` (image / text field parsing), ``batching``, ``model`` (one served pipeline),
``metrics``, ``state`` (what a running server holds), ``middleware``, ``app`` (create_app:
models, lifespan, routers), ``openai_routes`` / ``own_routes`` / ``page`` (the routers, by
surface), ``routing`` (what routes share), ``responses`` (the bodies, no FastAPI),
``streaming`` (server-sent events), ``run`` (command line: logging, uvicorn).
"""

from .app import create_app
from .config import ServeConfig
from .errors import ApiError
from .inputs import looks_like_base64_image
from .logs import JsonFormatter, configure_logging
from .run import parse_bundle_args, run_server

__all__ = [
    "ApiError",
    "JsonFormatter",
    "ServeConfig",
    "configure_logging",
    "create_app",
    "looks_like_base64_image",
    "parse_bundle_args",
    "run_server",
]
