"""Numpy scoring rules the pipelines and the server share (one copy each)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # split by sign so large |x| neither overflows nor loses precision
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out.astype(np.result_type(x, np.float32), copy=False)


MAX_TEMPLATE_CHARS = 1000


def check_template(template: str) -> str:
    """A zero-shot prompt template with exactly one '{}' where the label goes ('{{}}' is a
    literal brace pair, not a slot: the label would never reach the prompt)."""
    from ..errors import InputError

    if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
        raise InputError(f"template must be text of at most {MAX_TEMPLATE_CHARS} characters")
    try:
        filled = template.format("\x00")
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"template {template[:100]!r} has braces other than one '{{}}': {exc!r}") from None
    if filled.count("\x00") != 1:
        raise InputError(f"template {template[:100]!r} must contain '{{}}' where the label goes")
    return template
