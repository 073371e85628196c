"""TensorRT's INT8 input: a symmetric Q/DQ ONNX, made and checked here with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import require
from .config import Backend, Precision, QuantConfig
from .nodes import WEIGHT_OPS, matches, weight_nodes
from .onnxruntime_static import _Reader, float_outputs
from .recipe import Built, Feeds, Job, Recipe, register


def symmetric_qdq(src: Path, out: Path, calib: list[Feeds], cfg: QuantConfig) -> dict[str, Any]:
    """Q/DQ with int8 activations and weights, both symmetric (zero point 0): the only INT8
    Q/DQ form TensorRT accepts. Slower than uint8 in ORT on CPU, so CPU bundles never get it."""
    q = require("onnxruntime.quantization", "core")
    onnx = require("onnx", "export")
    nodes = [n.name for n in weight_nodes(onnx.load(str(src), load_external_data=False)) if not matches(n, cfg.exclude)]
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[cfg.method]
    q.quantize_static(
        str(src),
        str(out),
        _Reader(calib),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QInt8,
        weight_type=q.QuantType.QInt8,
        nodes_to_quantize=nodes,
        op_types_to_quantize=list(WEIGHT_OPS),
        calibrate_method=method,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    freed = float_outputs(out)
    return {
        "mode": "static",
        "format": "QDQ",
        "method": cfg.method,
        "activations": "int8 symmetric",
        "weights": "int8 per-channel symmetric",
        "for": "tensorrt",
        "quantized_nodes": len(nodes),
        "float_outputs": freed,
    }


def trt_qdq(job: Job) -> Built:
    rel = f"tensorrt/{job.component}.int8.qdq.onnx"
    recipe = symmetric_qdq(job.src, job.w.stage(rel), job.calib, job.cfg)
    return Built(files=[rel], recipe=recipe, tensorrt=True)


QDQ_SYMMETRIC = register(
    Recipe(
        name="int8-qdq-symmetric",
        precision=Precision.INT8,
        backend=Backend.TENSORRT,
        calibration=True,
        exclusions=True,
        build=trt_qdq,
        summary="symmetric int8 Q/DQ ONNX for TensorRT (plan built on the GPU)",
    )
)
