"""The one interface pipelines talk to: Session, its tensor specs, and what a build produced.

Backends (runtimes/backends/: one class per backend, registered by name) open sessions;
see runtimes/backends/base.py for what a backend declares and implements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import BackendError, InputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")  # int4: captioners' decoders (weight-only)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints for fixed axes, str for symbolic ones


@dataclass
class BuildResult:
    """What a backend produced: files relative to out_dir's bundle root, and open() options."""

    path: str
    files: list[str]
    runtime: dict[str, Any] = field(default_factory=dict)
    built_for: dict[str, Any] = field(default_factory=dict)


class Session(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def parse_list(value: str | None, allowed: tuple[str, ...] | list[str] | None, what: str) -> list[str]:
    """Split 'a,b' and check each item, so a typo is a one-line error; None (flag not given) -> [].
    An empty value or item ('', 'a,,b') is an error, not "all": it is a typo or an unset variable."""
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise InputError(
            f"--{what} {value!r}: empty item; give comma-separated names"
            + (f" from {', '.join(allowed)}" if allowed else "")
        )
    for item in items if allowed is not None else ():
        if item not in allowed:
            raise BackendError(f"unknown {what} {item!r}: choose from {', '.join(allowed)}")
    return items


MAX_BATCH = 4096  # a bench / serve batch beyond this is a typo, not a plan (it runs out of memory)


def parse_sizes(value: str, flag: str, lo: int = 1, hi: int = MAX_BATCH) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; empty, non-integer or out-of-range items are a one-line InputError."""
    items = [v.strip() for v in str(value).split(",")]
    if not any(items):
        raise InputError(f"{flag} is empty: give comma-separated integers, e.g. 1,8")
    out = []
    for v in items:
        try:
            n = int(v)
        except ValueError:
            raise InputError(
                f"{flag} {value!r}: {v!r} is not an integer (give comma-separated integers, e.g. 1,8)"
            ) from None
        if not lo <= n <= hi:
            raise InputError(f"{flag} {n}: must be between {lo} and {hi}")
        out.append(n)
    return out
