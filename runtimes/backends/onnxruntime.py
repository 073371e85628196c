"""ONNX Runtime backend: the fp32 ONNX file itself; CPU EP here (CUDA/TensorRT EPs with onnxruntime-gpu)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, InputError, require
from ..session import BuildResult, Decoder, Session, TensorSpec
from . import register
from .base import Backend, Capabilities

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


# --device -> execution providers. A requested GPU provider that is missing is an error,
# never a silent fall back to CPU; CPU stays last in the list for ops the GPU EP lacks.
DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def providers_for(device: str) -> list[str]:
    ort = require("onnxruntime", "core")
    if device not in DEVICES:
        raise BackendError(f"unknown onnxruntime device {device!r}: choose from {', '.join(DEVICES)}")
    wanted = DEVICES[device]
    have = set(ort.get_available_providers())
    if wanted[0] not in have:
        raise BackendError(
            f"{wanted[0]} is not available (have: {', '.join(sorted(have))}); for NVIDIA GPUs replace the "
            "CPU package:  pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
        )
    return [p for p in wanted if p in have]


# artifact.runtime["kv_cache"] of a decoder whose attention is GroupQueryAttention (exporter/ort_attention.py):
# past and present may be bound to one buffer, which ORT appends to in place
SHARED_BUFFER = "shared_buffer"


class OrtSession(Session):
    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers=None,
        spin: bool = True,
        kv_cache: str | None = None,
    ):
        ort = require("onnxruntime", "core")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        if not spin:  # idle threads sleep at once instead of spinning on cores another session needs next
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(
                str(path), sess_options=so, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from exc
        self.inputs = [
            TensorSpec(i.name, _ORT_TYPES.get(i.type, i.type), tuple(i.shape)) for i in self._sess.get_inputs()
        ]
        self.outputs = [
            TensorSpec(o.name, _ORT_TYPES.get(o.type, o.type), tuple(o.shape)) for o in self._sess.get_outputs()
        ]
        self._out_names = [o.name for o in self.outputs]
        if kv_cache not in (None, SHARED_BUFFER):
            raise BackendError(f"{path}: unknown kv_cache {kv_cache!r} (this mmdeploy knows {SHARED_BUFFER!r})")
        self.kv_cache = kv_cache

    def run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self._out_names, feeds)
        return dict(zip(self._out_names, outs))

    def open_decoder(self, cache: Sequence[tuple[str, str]], logits: str = "logits") -> OrtDecoder:
        if self.kv_cache == SHARED_BUFFER:
            return OrtSharedKvDecoder(self, cache, logits)
        return OrtDecoder(self, cache, logits)

    def close(self) -> None:
        self._sess = None  # ORT frees the session's memory (weights, arenas) with the last reference
        super().close()


class OrtDecoder(Decoder):
    """The decode fast path on ONNX Runtime: each K/V has two buffers allocated once per batch, each
    with room for the whole generation; a step binds past to one and present to the other (one
    IOBinding per batch), so ORT writes the new cache in place and no step allocates or copies it.
    The logits buffer (when its width is static) and the fixed inputs are bound once per batch."""

    def __init__(self, session: OrtSession, cache: Sequence[tuple[str, str]], logits: str = "logits"):
        self.session, self.logits_name = session, logits
        self.past_names = [p for p, _ in cache]
        self.present_names = [q for _, q in cache]
        dims = next(o.shape for o in session.outputs if o.name == logits)
        self._logits_dims = tuple(dims[1:]) if all(isinstance(d, int) for d in dims[1:]) else None
        self.logits: np.ndarray | None = None
        self.buffers: list[list[np.ndarray]] | None = None

    def start(self, past: dict[str, np.ndarray], fixed: dict[str, np.ndarray], room: int) -> None:
        from onnxruntime import OrtDevice, OrtValue

        self.shapes = [np.shape(past[n]) for n in self.past_names]  # (rows, heads, length, head_dim) each
        self.rows, self.length = int(self.shapes[0][0]), int(self.shapes[0][2])  # GIT: image tokens come first
        self.side = 0
        self._allocate(past, self.length + room)
        self.io = self.session._sess.io_binding()
        # Each step rebinds the K/V views (their length grows): through the C binding with one device
        # object, since the Python wrapper makes a new OrtDevice per call (~2 us; 3 binds a layer a step)
        self._c_io, self._cpu = self.io._iobinding, OrtDevice.make("cpu", 0)._get_c_device()
        self._run = self.session._sess._sess.run_with_iobinding
        self._keep = {k: np.ascontiguousarray(v) for k, v in fixed.items()}  # the OrtValues below borrow these
        for k, v in self._keep.items():  # cross K/V: bound once per batch
            self.io.bind_ortvalue_input(k, OrtValue.ortvalue_from_numpy(v))
        if self._logits_dims is not None:
            self.logits = np.empty((self.rows, *self._logits_dims), np.float32)
            self.io.bind_output(
                self.logits_name, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data
            )
        else:
            self.logits = None
            self.io.bind_output(self.logits_name, "cpu")

    def _allocate(self, past: dict[str, np.ndarray], size: int) -> None:
        """Two buffers per cache entry, ``size`` positions each; past goes into the first."""
        self._set_buffers([[np.empty(r * h * size * d, np.float32) for r, h, _, d in self.shapes] for _ in range(2)])
        for i, (buf, name) in enumerate(zip(self.buffers[0], self.past_names)):
            self._view(i, buf, self.length)[...] = past[name]

    def _set_buffers(self, buffers: list[list[np.ndarray]]) -> None:
        self.buffers = buffers
        self._ptrs = [[b.ctypes.data for b in side] for side in buffers]  # ctypes.data costs ~1 us a call
        r, h, _, d = self.shapes[0]
        self.room = buffers[0][0].size // (r * h * d)  # positions the buffers hold

    def _view(self, i: int, buf: np.ndarray, length: int) -> np.ndarray:
        r, h, _, d = self.shapes[i]
        return buf[: r * h * length * d].reshape(r, h, length, d)

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        c_io, cpu, n_past = self._c_io, self._cpu, self.length
        n_present = n_past + next(iter(feeds.values())).shape[1]
        src, dst = self._ptrs[self.side], self._ptrs[1 - self.side]
        if n_present > self.room:
            raise InputError(f"the decoder ran past the {self.room} positions it was given room for")
        for name, value in feeds.items():  # the arrays outlive the run: feeds holds them
            c_io.bind_input(name, value)
        for name, ptr, (r, h, _, d) in zip(self.past_names, src, self.shapes):
            c_io.bind_input(name, cpu, np.float32, [r, h, n_past, d], ptr)
        for name, ptr, (r, h, _, d) in zip(self.present_names, dst, self.shapes):
            c_io.bind_output(name, cpu, np.float32, [r, h, n_present, d], ptr)
        self._run(c_io, None)
        self.side, self.length = 1 - self.side, n_present
        return self.logits if self.logits is not None else self.io.get_outputs()[0].numpy()

    def present(self, name: str) -> np.ndarray:
        """A view of the buffer ORT wrote this cache entry into."""
        i = self.present_names.index(name)
        return self._view(i, self.buffers[self.side][i], self.length)

    def reorder(self, rows: np.ndarray) -> None:
        """Gather the surviving beams' rows into the idle buffers."""
        src, dst = self.buffers[self.side], self.buffers[1 - self.side]
        for i, (a, c) in enumerate(zip(src, dst)):
            np.take(self._view(i, a, self.length), rows, axis=0, out=self._view(i, c, self.length))
        self.side = 1 - self.side

    def trim(self, length: int) -> None:
        """Keep the first ``length`` positions: copied once into the idle buffers, where a shorter
        cache is laid out contiguously for the next step's binding."""
        if length >= self.length:
            return
        src, dst = self.buffers[self.side], self.buffers[1 - self.side]
        for i, (a, c) in enumerate(zip(src, dst)):
            self._view(i, c, length)[...] = self._view(i, a, self.length)[:, :, :length]
        self.side, self.length = 1 - self.side, length

    def reserve(self, room: int) -> None:
        """Room for ``room`` more positions: the buffers grow (by a quarter at least, so a long
        conversation reallocates rarely) and the cache moves into them."""
        have, need = self.room, self.length + room
        if need <= have:
            return
        size = max(need, have + have // 4)
        grown = [[np.empty(r * h * size * d, np.float32) for r, h, _, d in self.shapes] for _ in range(2)]
        for i, (a, c) in enumerate(zip(self.buffers[self.side], grown[0])):
            self._view(i, c, self.length)[...] = self._view(i, a, self.length)
        self._set_buffers(grown)
        self.side = 0

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for side in self.buffers or () for b in side)

    def close(self) -> None:
        self.io = self._c_io = self._run = self.buffers = self._keep = self.logits = None


class OrtSharedKvDecoder(OrtDecoder):
    """The decode path of a GroupQueryAttention decoder (artifact runtime ``kv_cache: shared_buffer``):
    one buffer per cache entry, (rows, heads, room, head_dim), bound as both past and present, so ORT
    writes each step's new positions into it and reads only the valid ones (the cache length comes from
    ``position_ids``). No step copies the cache (the two-buffer path's graph copies past into present,
    52 MB a step at 1,100 tokens on SmolVLM-256M fp32); trim is a length, nothing moves."""

    def _allocate(self, past: dict[str, np.ndarray], size: int) -> None:
        self.buffers = [[np.zeros((r, h, size, d), np.float32) for r, h, _, d in self.shapes]]
        self._bound = None
        self._ptrs = [[b.ctypes.data for b in self.buffers[0]]]
        self.room = size
        for buf, name in zip(self.buffers[0], self.past_names):
            buf[:, :, : self.length] = past[name]

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        c_io, cpu, room = self._c_io, self._cpu, self.room
        n_present = self.length + next(iter(feeds.values())).shape[1]
        if n_present > room:
            raise InputError(f"the decoder ran past the {room} positions it was given room for")
        for name, value in feeds.items():
            c_io.bind_input(name, value)
        if self._bound is not self.buffers:  # the same buffers every step: bound once (again after reserve)
            for past, present, ptr, (r, h, _, d) in zip(
                self.past_names, self.present_names, self._ptrs[0], self.shapes
            ):
                c_io.bind_input(past, cpu, np.float32, [r, h, room, d], ptr)
                c_io.bind_output(present, cpu, np.float32, [r, h, room, d], ptr)
            self._bound = self.buffers
        self._run(c_io, None)
        self.length = n_present
        return self.logits if self.logits is not None else self.io.get_outputs()[0].numpy()

    def present(self, name: str) -> np.ndarray:
        return self.buffers[0][self.present_names.index(name)][:, :, : self.length]

    def reorder(self, rows: np.ndarray) -> None:
        for buf in self.buffers[0]:
            buf[...] = buf[rows]

    def trim(self, length: int) -> None:
        self.length = min(length, self.length)  # the positions after it are overwritten as the cache grows

    def reserve(self, room: int) -> None:
        need = self.length + room
        if need <= self.room:
            return
        old = self.buffers[0]
        self._allocate({n: b[:, :, : self.length] for n, b in zip(self.past_names, old)}, max(need, self.room * 5 // 4))


@register
class OnnxRuntime(Backend):
    """The fp32 ONNX itself; quantize adds int8 / int4 / fp16 ONNX files that it runs too."""

    name = "onnxruntime"
    extra = "core"
    capabilities = Capabilities(
        builds=("fp32",),
        runs=("fp32", "fp16", "int8", "int4"),
        devices=tuple(DEVICES),
        kv_binding=True,  # IOBinding: the decoder writes its cache into preallocated buffers
    )

    def available(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def version(self) -> str:
        return require("onnxruntime", "core").__version__

    def build(self, onnx_path: Path, out_dir: Path, precision: str, component: str, **settings) -> BuildResult:
        """The fp32 ONNX in the bundle is already this backend's artifact: nothing to build."""
        if precision != "fp32":
            raise BackendError(f"onnxruntime builds fp32 only here, not {precision}")
        rel = onnx_path.relative_to(out_dir).as_posix()
        data = [rel + ".data"] if (out_dir / (rel + ".data")).is_file() else []  # external weights (large graphs)
        return BuildResult(path=rel, files=[rel, *data], built_for={"onnxruntime": self.version()})

    def open(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> OrtSession:
        options = options or {}
        return OrtSession(
            path,
            threads=threads,
            providers=providers_for(device or "cpu"),
            spin=options.get("spin", True),
            kv_cache=options.get("kv_cache"),
        )

    def describe(self) -> str:
        return f"providers: {', '.join(require('onnxruntime', 'core').get_available_providers())}"
