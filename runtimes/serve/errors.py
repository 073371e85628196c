"""The one error shape of the HTTP API: ``{"error": {"message", "type", "code", "param"}}``.

Every failure becomes an :class:`ApiError` (``as_api_error``); the app has one handler that
renders it, so routes raise and never build error bodies themselves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ...errors import InputError
from .batching import ItemError, QueueFullError, ShuttingDownError

log = logging.getLogger("mmdeploy.serve")


class ApiError(Exception):
    """An HTTP error with an OpenAI-style JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class FieldError(ValueError):
    """A request field's value is wrong: raised inside validation, ``code`` is the API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def json_type(v: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "an integer",
        float: "a number",
    }.get(type(v), type(v).__name__)


def as_api_error(exc: BaseException, timeout_s: float) -> ApiError:
    """Any exception -> the ApiError the client sees (5xx only for what the server caused)."""
    if isinstance(exc, ItemError):
        exc = exc.error
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InputError):
        return ApiError(400, str(exc), code="invalid_input")
    if isinstance(exc, QueueFullError):
        return ApiError(
            503,
            str(exc),
            type="server_overloaded",
            code="queue_full",
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )
    if isinstance(exc, ShuttingDownError):
        return ApiError(503, str(exc), type="server_overloaded", code="shutting_down", headers={"Retry-After": "1"})
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ApiError(504, f"request took longer than {timeout_s:g} s", type="timeout", code="timeout")
    log.error(
        "internal error",
        exc_info=exc,
        extra={"fields": {"event": "internal_error", "error": f"{type(exc).__name__}: {exc}"}},
    )
    return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error", code="internal_error")
