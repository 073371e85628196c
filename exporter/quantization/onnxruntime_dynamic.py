"""Dynamic INT8 on ONNX Runtime (data-free: activations quantized on the fly): encoders through the
static builder's node selection (onnxruntime_static.OrtInt8, mode dynamic), decoders with Gemm
rewritten to MatMul first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import require
from ..graph import gemm_to_matmul, quiet
from .config import Backend, Precision
from .nodes import DYNAMIC_OPS, quantized_counts
from .onnxruntime_static import ort_int8
from .recipe import Built, Recipe, register


def quantize_nodes_dynamic(src: Path, out: Path, names: list[str]) -> dict[str, Any]:
    """Dynamic INT8 of the named MatMul / Conv weight nodes of an encoder graph (OrtInt8's node
    selection); returns the recipe record with the integer nodes really in the graph."""
    q = require("onnxruntime.quantization", "core")
    with quiet():
        q.quantize_dynamic(
            str(src),
            str(out),
            per_channel=True,
            weight_type=q.QuantType.QInt8,
            nodes_to_quantize=names,
            op_types_to_quantize=list(DYNAMIC_OPS),
        )
    return {
        "mode": "dynamic",
        "weights": "int8 per-channel symmetric",
        "activations": "uint8 dynamic",
        **quantized_counts(out),
    }


def int8_matmul(src: Path, w, comp: str) -> Built:
    onnx = require("onnx", "export")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    n_gemm = gemm_to_matmul(model)
    tmp = w.stage(f"onnxruntime/{comp}.prep.onnx")
    onnx.save(model, str(tmp))
    rel = f"onnxruntime/{comp}.int8.onnx"
    with quiet():
        quantize_dynamic(
            str(tmp), str(w.stage(rel)), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
        )
    tmp.unlink()
    return Built(
        files=[rel],
        recipe={
            "mode": "dynamic",
            "weights": "int8 per-channel symmetric",
            "activations": "uint8 dynamic",
            "ops": "MatMul (Gemm rewritten to MatMul: %d)" % n_gemm,
            "tool": "onnxruntime.quantization",
        },
    )


DYNAMIC = register(
    Recipe(
        name="int8-dynamic",
        precision=Precision.INT8,
        backend=Backend.ONNXRUNTIME,
        calibration=False,
        exclusions=True,
        build=ort_int8,
        summary="dynamic: int8 per-channel weights, activations quantized on the fly (MatMul, Conv)",
    )
)
DYNAMIC_MATMUL = register(
    Recipe(
        name="int8-dynamic-matmul",
        precision=Precision.INT8,
        backend=Backend.ONNXRUNTIME,
        calibration=False,
        exclusions=False,
        build=lambda job: int8_matmul(job.src, job.w, job.component),
        summary="dynamic INT8 with Gemm rewritten to MatMul (decoder projections), data-free",
    )
)
