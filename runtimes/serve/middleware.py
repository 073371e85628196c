"""Pure ASGI middleware: request id, API key, body-size limit, metrics and the access log."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import re
import time
import uuid

from .config import INFERENCE_ROUTES, OPEN_PREFIXES, OPEN_ROUTES, ROUTES
from .errors import ApiError
from .state import ServerState

log = logging.getLogger("mmdeploy.serve")


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


_RID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_ids = itertools.count(1)
_ID_PREFIX = uuid.uuid4().hex[:8]


class Guard:
    """Pure ASGI middleware: request id, API key, body-size limit, metrics and the access log."""

    def __init__(self, app, server: ServerState):
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
            srv.working += 1
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
            await send_json(send_, code, ApiError(code, message, type=type_, code=err_code).body(), extra)

        try:
            if counted and srv.draining:  # SIGTERM: in-flight work finishes, new work goes elsewhere
                return await reject(
                    503,
                    "server is shutting down; retry on another replica",
                    "draining",
                    "server_overloaded",
                    [(b"retry-after", b"1"), (b"connection", b"close")],
                )
            if cfg.api_key and path not in OPEN_ROUTES and not path.startswith(OPEN_PREFIXES):
                auth = headers.get(b"authorization", b"")
                scheme, _, token = auth.partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), cfg.api_key.encode()):
                    return await reject(
                        401,
                        "missing or wrong API key: send 'Authorization: Bearer <key>'",
                        "invalid_api_key",
                        "authentication_error",
                        [(b"www-authenticate", b"Bearer")],
                    )
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
                deadline = time.monotonic() + cfg.body_timeout_s  # a stalled sender is cut off, not waited for
                while more:
                    try:
                        msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        return await reject(
                            408,
                            f"request body not received within {cfg.body_timeout_s:g} s",
                            "body_timeout",
                            extra=[(b"connection", b"close")],
                        )
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
            if counted:
                srv.working -= 1
            m = srv.metrics
            m.inflight.dec()
            elapsed = time.perf_counter() - start
            m.requests.labels(route, str(status[0])).inc()
            m.latency.labels(route).observe(elapsed)
            if (route not in ("/metrics", "/health") or status[0] >= 400) and log.isEnabledFor(logging.INFO):
                fields_ = {
                    "event": "request",
                    "request_id": rid,
                    "method": scope["method"],
                    "path": path,
                    "status": status[0],
                    "ms": round(elapsed * 1000, 2),
                }
                for k in ("model", "items", "error"):
                    if k in state:
                        fields_[k] = state[k]
                client = scope.get("client")
                if client:
                    fields_["client"] = client[0]
                log.info("request", extra={"fields": fields_})
