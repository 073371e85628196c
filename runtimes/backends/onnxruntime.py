"""ONNX Runtime backend: the fp32 ONNX file itself; CPU EP here (CUDA/TensorRT EPs with onnxruntime-gpu)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, require
from ..session import BuildResult, TensorSpec
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


class OrtSession:
    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers=None, spin: bool = True):
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

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self._out_names, feeds)
        return dict(zip(self._out_names, outs))


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
            path, threads=threads, providers=providers_for(device or "cpu"), spin=options.get("spin", True)
        )

    def describe(self) -> str:
        return f"providers: {', '.join(require('onnxruntime', 'core').get_available_providers())}"
