"""A recipe, the job it builds and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Job:
    """One component of one bundle, being quantized: what a recipe's build gets."""

    src: Path  # the fp32 ONNX (staged)
    w: Any  # the BundleWriter
    component: str
    cfg: Any  # QuantConfig
    calib: list[dict[str, np.ndarray]] | None
    workdir: Path
    fidelity: Callable[..., dict[str, Any]]  # (path, runtime={}, backend="onnxruntime") -> parity vs fp32
    log: Callable[[str], None]


@dataclass
class Built:
    files: list[str]
    runtime: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None  # set when the build measured it (accuracy-aware search)
    tensorrt: bool = False  # a Q/DQ ONNX for `mmdeploy build` on the GPU, not a variant that runs here


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str
    backend: str
    calibration: bool  # needs --calib
    exclusions: bool  # honours --exclude (and records calibration / exclusions in the artifact)
    build: Callable[[Job], Built]
    summary: str
