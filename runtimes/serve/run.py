"""`mmdeploy serve` from the command line: bundle arguments, JSON logs, uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import InputError, require
from .app import create_app
from .config import MODEL_NAME, ServeConfig
from .logs import configure_logging
from .protocol import DrainingServer

log = logging.getLogger("mmdeploy.serve")


def parse_bundle_args(args: list[str]) -> dict[str, Path]:
    """``["out/clip", "cap=out/blip"]`` -> ``{"clip": Path("out/clip"), "cap": Path("out/blip")}``."""
    out: dict[str, Path] = {}
    for a in args:
        name, eq, path = a.partition("=")
        if not eq or os.path.exists(a):
            path, name = a, Path(a).resolve().name
        if not MODEL_NAME.fullmatch(name):
            raise InputError(f"model name {name!r} (from {a!r}): use letters, digits and . _ - : only (or NAME=PATH)")
        if name in out:
            raise InputError(f"two bundles are named {name!r}: name them with NAME=PATH")
        out[name] = Path(path)
    if not out:
        raise InputError("give at least one bundle to serve")
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int) -> None:
    """Bind once before the bundles load, so a bad address or a busy port is one line, not uvicorn's
    log and exit 3 after a minute of loading."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--host {host!r}: not an address of this machine ({exc})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_server(
    bundles: list[str] | Mapping[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    log_level: str = "info",
    graceful_timeout_s: float = 30.0,
) -> None:
    """Load the bundles and serve until SIGINT/SIGTERM: the first signal drains (health 503, new work
    503 + Retry-After, in-flight requests finish), then the server stops; a second stops at once."""
    require("uvicorn", "serve")
    configure_logging(log_level)
    named = parse_bundle_args(list(bundles)) if not isinstance(bundles, Mapping) else dict(bundles)
    check_bind(host, port)
    cfg = config or ServeConfig()
    if not _is_loopback(host) and not cfg.api_key:
        log.warning(
            "serving on a non-loopback address without an API key",
            extra={"fields": {"event": "insecure", "host": host}},
        )
    app = create_app(named, cfg, backend=backend, precision=precision, threads=threads)
    log.info(
        "listening", extra={"fields": {"event": "listen", "url": f"http://{host}:{port}", "api_key": bool(cfg.api_key)}}
    )
    DrainingServer(app, host=host, port=port, log_level=log_level, graceful_timeout_s=graceful_timeout_s).run()
