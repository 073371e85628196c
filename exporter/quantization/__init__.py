"""Quantization recipes x backends: each recipe is one way of making a (backend, precision)
variant from a bundle's fp32 ONNX, with what it needs (calibration data or none) and the
graph-level code that builds it. Which recipe serves each (backend, precision) of a family, its
feeds and gates: policies.py (feeds.py, gates.py); exporter/quantize.py is the one driver for all.
One module per recipe family x backend (NNCF's split), each registering its recipes
(keyword-only `Recipe`s, typed `Job`s) in recipe.RECIPES.

INT8 on ONNX Runtime (CPU): static Q/DQ (uint8 asymmetric activations from calibration, int8
per-channel weights; accuracy-aware mode keeps the most sensitive layer groups float) or dynamic.
Captioners' decoders are memory-bound at batch 1 (every weight read once per token), so their
variants are data-free: dynamic INT8 with Gemm rewritten to MatMul, int4 MatMulNBits, OpenVINO
weight-only INT8. TensorRT gets a symmetric int8 Q/DQ ONNX (the form it accepts), built and
checked here with ONNX Runtime; the plan is built on the GPU. No torch here.
"""

from __future__ import annotations

# importing each recipe module registers its recipes in RECIPES
from . import onnxruntime_dynamic, onnxruntime_fp16, onnxruntime_int4, openvino_float, tensorrt_qdq  # noqa: F401
from .config import METHODS, MODES, Backend, Method, Mode, Precision, QuantConfig
from .nodes import (
    DEFAULT_EXCLUDE,
    DYNAMIC_OPS,
    INTEGER_OPS,
    WEIGHT_OPS,
    layer_groups,
    matches,
    quantized_counts,
    weight_nodes,
)
from .onnxruntime_static import OrtInt8, float_outputs
from .openvino_nncf import NNCF_PRESET_SMOOTH_QUANT, nncf_patterns
from .recipe import RECIPES, Built, Job, Recipe
from .tensorrt_qdq import symmetric_qdq

__all__ = [
    "Backend",
    "Built",
    "DEFAULT_EXCLUDE",
    "DYNAMIC_OPS",
    "INTEGER_OPS",
    "Job",
    "METHODS",
    "MODES",
    "Method",
    "Mode",
    "NNCF_PRESET_SMOOTH_QUANT",
    "OrtInt8",
    "Precision",
    "QuantConfig",
    "RECIPES",
    "Recipe",
    "WEIGHT_OPS",
    "float_outputs",
    "layer_groups",
    "matches",
    "nncf_patterns",
    "quantized_counts",
    "symmetric_qdq",
    "weight_nodes",
]
