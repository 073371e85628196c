"""Every recipe by name."""

from __future__ import annotations

from collections.abc import Callable

from .onnxruntime_dynamic import _ort_int8_matmul
from .onnxruntime_fp16 import _ort_fp16
from .onnxruntime_int4 import _ort_int4
from .onnxruntime_static import _ort_int8_calibrated
from .openvino_float import _ov_variant
from .openvino_nncf import _ov_nncf
from .recipe import Built, Job, Recipe
from .tensorrt_qdq import _trt_qdq


def _files(fn) -> Callable[[Job], Built]:
    """A builder written as (src, w, component) -> (files, runtime, recipe)."""
    return lambda job: Built(*fn(job.src, job.w, job.component))


def _ov(precision: str) -> Callable[[Job], Built]:
    return lambda job: Built(*_ov_variant(job.src, job.w, job.component, precision))


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "int8-static",
            "int8",
            "onnxruntime",
            True,
            True,
            _ort_int8_calibrated,
            "static Q/DQ: uint8 activations from calibration, int8 per-channel weights",
        ),
        Recipe(
            "int8-dynamic",
            "int8",
            "onnxruntime",
            False,
            True,
            _ort_int8_calibrated,
            "dynamic: int8 per-channel weights, activations quantized on the fly (MatMul, Conv)",
        ),
        Recipe(
            "int8-dynamic-matmul",
            "int8",
            "onnxruntime",
            False,
            False,
            _files(_ort_int8_matmul),
            "dynamic INT8 with Gemm rewritten to MatMul (decoder projections), data-free",
        ),
        Recipe(
            "int8-nncf",
            "int8",
            "openvino",
            True,
            True,
            _ov_nncf,
            "NNCF post-training quantization (transformer preset)",
        ),
        Recipe("int8-weight-only", "int8", "openvino", False, False, _ov("int8"), "NNCF weight-only INT8, f32 compute"),
        Recipe(
            "int8-qdq-symmetric",
            "int8",
            "tensorrt",
            True,
            True,
            _trt_qdq,
            "symmetric int8 Q/DQ ONNX for TensorRT (plan built on the GPU)",
        ),
        Recipe(
            "int4-weight-only",
            "int4",
            "onnxruntime",
            False,
            False,
            _files(_ort_int4),
            "decoder int4 MatMulNBits (blocks of 32), other components dynamic INT8",
        ),
        Recipe(
            "fp16-onnxruntime",
            "fp16",
            "onnxruntime",
            False,
            False,
            _files(_ort_fp16),
            "fp16 weights and compute, fp32 I/O",
        ),
        Recipe("fp16-openvino", "fp16", "openvino", False, False, _ov("fp16"), "fp16-compressed IR"),
        Recipe("bf16-openvino", "bf16", "openvino", False, False, _ov("bf16"), "the fp32 IR with bf16 compute"),
    )
}
