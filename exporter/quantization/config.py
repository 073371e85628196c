"""What `mmdeploy quantize` was asked for: one QuantConfig per run."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("minmax", "entropy", "percentile")
MODES = ("static", "dynamic", "best")  # best: exporter/choose.py tries the recipes here


@dataclass
class QuantConfig:
    precision: str
    backend: str = "onnxruntime"
    mode: str = "static"
    calib: str | None = None
    method: str = "minmax"
    samples: int = 32
    exclude: list[str] | None = None  # None: DEFAULT_EXCLUDE for static INT8; [] quantizes everything
    min_cosine: float | None = None
    min_agreement: float = 0.8  # generative variants: share of fp32's greedy tokens they must reproduce
    components: list[str] | None = None
    threads: int | None = None
    mode_given: bool = False  # --mode on the command line: said when the recipe has no modes
    smooth_quant: float = -1.0  # NNCF SmoothQuant alpha for MatMul; -1: off (measured: see NNCF_PRESET_SMOOTH_QUANT)
