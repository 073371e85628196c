"""The HTTP layer under the app: header timeout, JSON 400s, and a drain on SIGTERM.

uvicorn keeps a connection that never finishes its headers open forever (one slowloris
client per socket until the process runs out), answers a malformed request with a
plain-text 400, and on SIGTERM closes its listening socket at once, so an orchestrator's
readiness probe never sees "draining". Here:

- :func:`protocol_class` subclasses uvicorn's httptools protocol: a request's line and
  headers must arrive within ``header_timeout_s`` of its first byte (or of the connection
  opening), else a JSON 408 and the socket is closed; parser errors are JSON 400s.
- :class:`DrainingServer`: the first SIGTERM / SIGINT marks the server draining
  (``/health`` 503 "draining", new inference requests 503 + Retry-After) while it keeps
  listening; once no inference request is in flight (or ``drain_timeout_s`` passed) uvicorn's
  own shutdown runs (lifespan closes the batchers) and the process exits 0. A second
  signal stops at once.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import Any

from .errors import ApiError
from .state import ServerState

__all__ = ["DrainingServer", "protocol_class"]

log = logging.getLogger("mmdeploy.serve")


def _json_response(status: int, reason: bytes, err: ApiError) -> bytes:
    body = json.dumps(err.body()).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason, len(body))
    ) + body


def protocol_class(header_timeout_s: float):
    """uvicorn's httptools protocol with a header timeout and JSON errors (None without httptools)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # uvicorn without [standard]: its default protocol, no header timeout
        return None

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            err = ApiError(408, f"request headers not received within {header_timeout_s:g} s", code="header_timeout")
            self.transport.write(_json_response(408, b"Request Timeout", err))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            err = ApiError(400, f"malformed HTTP request ({msg.rstrip('.').lower()})", code="bad_request")
            self.transport.write(_json_response(400, b"Bad Request", err))
            self.transport.close()

    return GuardedHttpToolsProtocol


def _uvicorn_server_class():
    import uvicorn

    class _DrainingServer(uvicorn.Server):
        def __init__(self, config, state: ServerState, drain_timeout_s: float):
            super().__init__(config)
            self.state, self.drain_timeout_s = state, drain_timeout_s
            self.drain_started: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.drain_started is None:
                self.begin_drain(signal.Signals(sig).name if sig else "signal")
                return  # not recorded as captured: a clean drain is a clean exit (code 0)
            self.should_exit = self.force_exit = True  # a second signal: stop now

        def begin_drain(self, why: str = "SIGTERM") -> None:
            self.drain_started = time.monotonic()
            self.state.draining = True
            log.info("draining", extra={"fields": {"event": "drain", "signal": why, "working": self.state.working}})

        async def on_tick(self, counter: int) -> bool:
            if self.drain_started is not None and not self.should_exit:
                waited = time.monotonic() - self.drain_started
                if self.state.working <= 0 or waited >= self.drain_timeout_s:
                    if self.state.working > 0:
                        log.warning(
                            "drain timed out",
                            extra={"fields": {"event": "drain_timeout", "working": self.state.working}},
                        )
                    self.should_exit = True
            return await super().on_tick(counter)

    return _DrainingServer


def DrainingServer(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    graceful_timeout_s: float = 30.0,
    **config_kw,
):
    """A uvicorn Server for ``app`` (from create_app) with the guarded protocol and the drain."""
    import uvicorn

    srv: ServerState = app.state.server
    cfg = srv.cfg
    proto = protocol_class(cfg.header_timeout_s)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout_s,
        lifespan="on",
        **({"http": proto} if proto is not None else {}),
        **config_kw,
    )
    return _uvicorn_server_class()(config, srv, cfg.drain_timeout_s)
