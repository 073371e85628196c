"""The one interface pipelines talk to, and the registry of backends.

A backend is a module in runtimes/ with:
    NAME, EXTRA, PRECISIONS
    available() -> str | None            None when usable, else why not (one line)
    build(onnx_path, out_dir, precision, component) -> BuildResult
    open(path, runtime: dict, threads: int | None) -> Session
Backends import their SDK lazily so `import mmdeploy.runtimes` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import BackendError, InputError

BACKENDS = {
    "onnxruntime": "mmdeploy.runtimes.backends.onnxruntime",
    "openvino": "mmdeploy.runtimes.backends.openvino",
    "tensorrt": "mmdeploy.runtimes.backends.tensorrt",
}
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


def backend_module(name: str):
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def check_precision(backend: str, precision: str) -> None:
    mod = backend_module(backend)
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision not in mod.PRECISIONS:
        raise BackendError(
            f"backend {backend} does not build precision {precision} here (it builds: {', '.join(mod.PRECISIONS)})"
        )


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
