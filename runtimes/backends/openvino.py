"""OpenVINO backend: IR converted from the bundle's ONNX; fp32 and bf16 share one IR.

On CPUs with AVX512-BF16/AMX, OpenVINO silently runs f32 models in bf16 unless told
INFERENCE_PRECISION_HINT=f32, so fp32 pins f32 and bf16 is its own, explicit variant.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, require
from ..session import BuildResult, RunDecoder, Session, TensorSpec
from . import register
from .base import Backend, Capabilities

_HINT = {"fp32": "f32", "bf16": "bf16"}

_core = None


def _ov():
    return require("openvino", "openvino")


def core():
    global _core
    if _core is None:
        _core = _ov().Core()
    return _core


_NP = {
    "f32": "float32",
    "f16": "float16",
    "i64": "int64",
    "i32": "int32",
    "boolean": "bool",
    "u8": "uint8",
    "i8": "int8",
    "bf16": "bfloat16",
}


def _spec(port, prefer_graph_name: bool = False) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    name, names = port.get_any_name(), sorted(port.get_names())
    if prefer_graph_name and name.startswith("/"):
        # an input fused with its first node carries that node's "/..." output name too: say the graph's
        name = next((n for n in names if not n.startswith("/")), name)
    aliases = tuple(n for n in names if n != name)
    return TensorSpec(name, _NP.get(port.get_element_type().get_type_name(), "?"), shape, aliases)


class OvSession(Session):
    def __init__(self, path: str | os.PathLike, runtime: dict[str, Any] | None, threads: int | None):
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        config.update(runtime or {})
        device = str(config.pop("device", "cpu")).upper()
        if device not in core().available_devices:
            raise BackendError(
                f"OpenVINO device {device} is not available here (have: {', '.join(core().available_devices)})"
            )
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self._compiled = core().compile_model(str(path), device, config)
        except RuntimeError as exc:
            raise BackendError(f"openvino cannot load {path}: {str(exc).splitlines()[0]}") from exc
        self._request = self._compiled.create_infer_request()
        self.inputs = [_spec(p, prefer_graph_name=True) for p in self._compiled.inputs]
        self.outputs = [_spec(p) for p in self._compiled.outputs]
        self._out_ports = list(self._compiled.outputs)
        self._decode_request = None  # the decoders' own request, made on first use

    def run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(feeds)
        # copy: the request's output buffers are reused by the next call
        return {s.name: np.array(result[p], copy=True) for s, p in zip(self.outputs, self._out_ports)}

    def open_decoder(self, cache: Sequence[tuple[str, str]], logits: str = "logits") -> OvDecoder:
        if self._decode_request is None:
            # an own request: shared (zero-copy) inputs must not leak into run()'s copying request
            self._decode_request = self._compiled.create_infer_request()
        return OvDecoder(self, cache, logits, self._decode_request)

    def close(self) -> None:
        self._request = self._decode_request = self._compiled = None  # OpenVINO frees the compiled model
        super().close()


class OvDecoder(RunDecoder):
    """The decode path on OpenVINO: the session's decode request shares our input arrays (no copy in)
    and present is copied out: output tensors bound to our buffers were measured to be overwritten
    when another request of the same compiled model ran between two steps."""

    def __init__(self, session: OvSession, cache: Sequence[tuple[str, str]], logits: str, request):
        super().__init__(session, cache, logits)
        self.request = request

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.request.infer(feeds, share_inputs=True, share_outputs=False)
        return {p.get_any_name(): res[p] for p in res.keys()}


@register
class OpenVino(Backend):
    """IR converted from the bundle's ONNX (fp32 and bf16 share one IR); quantize adds int8 / fp16 IRs."""

    name = "openvino"
    extra = "openvino"
    capabilities = Capabilities(
        builds=("fp32", "bf16"),
        runs=("fp32", "bf16", "fp16", "int8", "int4"),
        devices=("cpu", "gpu"),
        # what OpenVINO's CPU plugin looks for; cpu_supports asks the plugin itself (it decides)
        cpu_needs={"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16",)},
        device_build=True,
    )

    def available(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (pip install 'mmdeploy[openvino]')"
        return None

    def version(self) -> str:
        return _ov().get_version()

    def cpu_supports(self, precision: str) -> bool:
        """The CPU plugin's own OPTIMIZATION_CAPABILITIES (what it will really run natively)."""
        need = {"bf16": "BF16", "fp16": "FP16", "int8": "INT8"}.get(precision)
        return need is None or need in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")

    def build(self, onnx_path: Path, out_dir: Path, precision: str, component: str, **settings) -> BuildResult:
        self.check_builds(precision)
        if not self.cpu_supports(precision):
            raise BackendError(f"this CPU has no native {precision} support for OpenVINO")
        ov = _ov()
        xml = out_dir / "openvino" / f"{component}.xml"
        if not xml.exists():  # fp32 and bf16 share the IR
            xml.parent.mkdir(parents=True, exist_ok=True)
            model = ov.convert_model(str(onnx_path))
            ov.save_model(model, str(xml), compress_to_fp16=False)
        rel = xml.relative_to(out_dir).as_posix()
        return BuildResult(
            path=rel,
            files=[rel, rel[:-4] + ".bin"],
            runtime={"INFERENCE_PRECISION_HINT": _HINT[precision]},
            built_for={"openvino": self.version(), "device": "CPU"},
        )

    def open(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> OvSession:
        return OvSession(path, dict(options or {}, **({"device": device} if device else {})), threads)

    def describe(self) -> str:
        caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return f"devices: {', '.join(core().available_devices)}; CPU: {', '.join(caps)}"
