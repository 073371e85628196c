"""The one interface pipelines talk to: Session, its tensor specs, and what a build produced.

Backends (runtimes/backends/: one class per backend, registered by name) open sessions;
see runtimes/backends/base.py for what a backend declares and implements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BackendError, InputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")  # int4: captioners' decoders (weight-only)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints for fixed axes, str for symbolic ones
    aliases: tuple[str, ...] = ()  # other names the backend knows it by (an OpenVINO port has several)


@dataclass
class BuildResult:
    """What a backend produced: files relative to out_dir's bundle root, and open() options."""

    path: str
    files: list[str]
    runtime: dict[str, Any] = field(default_factory=dict)
    built_for: dict[str, Any] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # files the bundle keeps beside it for later builds (a cache)


class Session:
    """One opened artifact (Polygraphy's runner): ``run(feeds)`` checks the feeds against ``inputs``
    (names, dtypes, ranks, fixed axes: one InputError naming the input) and then calls the
    backend's ``run_impl``. A context manager: leaving it (or ``close()``) releases native resources.

    ``open_decoder`` runs a decoder-step graph step by step with its KV cache kept by the backend;
    this default feeds ``run`` (backends with a faster way override it)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    closed = False

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise BackendError("this session was closed")
        return self.run_impl(self.check_feeds(feeds))

    def run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The feeds as arrays of the graph's dtypes; a missing, unknown or misshapen input is an InputError.
        A feed of the same kind in another width (int32 ids, float64 pixels) is converted, as the graph takes it."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must map input names to arrays, got {type(feeds).__name__}")
        takes = ", ".join(s.name for s in self.inputs)
        known = {n for s in self.inputs for n in (s.name, *s.aliases)}
        for name in feeds:
            if name not in known:
                raise InputError(f"unknown input {name!r}: the graph takes {takes}")
        out = {}
        for spec in self.inputs:
            given = next((n for n in (spec.name, *spec.aliases) if n in feeds), None)
            if given is None:
                raise InputError(f"missing input {spec.name!r}: the graph takes {takes}")
            out[given] = _checked(spec.name, feeds[given], spec)
        return out

    def open_decoder(self, cache: Sequence[tuple[str, str]], logits: str = "logits") -> Decoder:
        """A decoder over this decoder-step session; ``cache``: (past input, present output) pairs."""
        return RunDecoder(self, cache, logits)

    def close(self) -> None:
        """Release the backend's native resources now; the session refuses to run afterwards."""
        self.closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _np_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and the like: numpy has no such dtype, the backend converts
        return None


_KINDS = {"f": "f", "i": "i", "u": "i", "b": "b"}  # same kind: a wider or narrower int / float is converted


def _checked(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    want = _np_dtype(spec.dtype)
    if want is not None and arr.dtype != want:
        if _KINDS.get(arr.dtype.kind) != _KINDS.get(want.kind):
            raise InputError(f"input {name!r}: dtype {arr.dtype}, the graph takes {want}")
        arr = arr.astype(want)
    shape = spec.shape
    if shape is not None:
        if arr.ndim != len(shape):
            raise InputError(f"input {name!r}: rank {arr.ndim} (shape {arr.shape}), the graph takes rank {len(shape)}")
        for axis, (dim, got) in enumerate(zip(shape, arr.shape)):
            if isinstance(dim, int) and dim >= 0 and dim != got:
                raise InputError(f"input {name!r}: axis {axis} is {got}, the graph takes {dim} (shape {arr.shape})")
    return arr


class Decoder:
    """A decoder-step graph run step by step, its KV cache kept by the backend (Session.open_decoder).

    start(past, fixed, room)  a batch begins: ``past`` the cache it starts from by past input name
                              (rows, heads, length, head_dim), ``fixed`` inputs the same every step
                              (cross K/V), ``room`` the positions the steps will add at most
    step(feeds) -> logits     one step on the per-step inputs (ids, positions); the cache grows
    present(name)             the cache of present output ``name`` after the last step
    reorder(rows)             the cache of these batch rows, in this order (beam search)
    trim(length)              keep the first ``length`` positions (a kept conversation's shared
                              prefix; 0 empties the cache)
    reserve(room)             room for ``room`` more positions than the cache holds (a new turn)
    length / nbytes           positions the cache holds / the memory it takes
    """

    length = 0

    def start(self, past: dict[str, np.ndarray], fixed: dict[str, np.ndarray], room: int) -> None:
        raise NotImplementedError

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def present(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def reorder(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def trim(self, length: int) -> None:
        raise NotImplementedError

    def reserve(self, room: int) -> None:
        """Backends whose buffers are sized ahead grow them here; others need nothing."""

    @property
    def nbytes(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Drop the cache buffers now."""

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunDecoder(Decoder):
    """The generic decoder: each step is one ``infer`` of every input, present K/V become the next past."""

    def __init__(self, session: Session, cache: Sequence[tuple[str, str]], logits: str = "logits"):
        self.session, self.cache, self.logits_name = session, list(cache), logits
        self.past_of = {present: past for past, present in self.cache}
        self.past: dict[str, np.ndarray] = {}
        self.fixed: dict[str, np.ndarray] = {}

    def start(self, past: dict[str, np.ndarray], fixed: dict[str, np.ndarray], room: int) -> None:
        self.past, self.fixed = dict(past), dict(fixed)
        self.length = int(np.shape(next(iter(past.values())))[2]) if past else 0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run(feeds)

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.infer({**feeds, **self.past, **self.fixed})
        self.past = {p: np.asarray(out[q]) for p, q in self.cache}
        self.length += int(next(iter(feeds.values())).shape[1])
        return np.asarray(out[self.logits_name])

    def present(self, name: str) -> np.ndarray:
        return self.past[self.past_of[name]]

    def reorder(self, rows: np.ndarray) -> None:
        self.past = {k: np.ascontiguousarray(v[rows]) for k, v in self.past.items()}

    def trim(self, length: int) -> None:
        if length < self.length:
            self.past = {k: np.ascontiguousarray(v[:, :, :length]) for k, v in self.past.items()}
            self.length = length

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.past.values())

    def close(self) -> None:
        self.past, self.fixed = {}, {}


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
