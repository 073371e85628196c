"""What `mmdeploy quantize` was asked for (one QuantConfig per run) and the names recipes use."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class _Named(str, Enum):
    """A str enum that prints as its value (so messages and manifests read "int8", not "Precision.INT8")."""

    def __str__(self) -> str:
        return self.value


class Backend(_Named):
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


class Precision(_Named):
    INT8 = "int8"
    INT4 = "int4"
    FP16 = "fp16"
    BF16 = "bf16"


class Mode(_Named):
    STATIC = "static"
    DYNAMIC = "dynamic"
    BEST = "best"  # exporter/choose.py tries the recipes here


class Method(_Named):  # calibration statistics of static INT8
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


METHODS = tuple(m.value for m in Method)
MODES = tuple(m.value for m in Mode)


@dataclass(kw_only=True)
class QuantConfig:
    precision: str
    backend: str = Backend.ONNXRUNTIME.value
    mode: str = Mode.STATIC.value
    calib: str | None = None
    method: str = Method.MINMAX.value
    samples: int | None = None  # None: the family's policy's (calibration_samples)
    exclude: list[str] | None = None  # None: DEFAULT_EXCLUDE for static INT8; [] quantizes everything
    min_cosine: float | None = None
    min_agreement: float = 0.8  # generative variants: share of fp32's greedy tokens they must reproduce
    components: list[str] | None = None
    threads: int | None = None
    mode_given: bool = False  # --mode on the command line: said when the recipe has no modes
    smooth_quant: float = -1.0  # NNCF SmoothQuant alpha for MatMul; -1: off (measured: see NNCF_PRESET_SMOOTH_QUANT)
