"""Dynamic INT8 on ONNX Runtime (data-free: activations quantized on the fly): encoders through the
static builder's node selection (onnxruntime_static.OrtInt8, mode dynamic), decoders with Gemm
rewritten to MatMul first."""

from __future__ import annotations

from pathlib import Path

from ...errors import require
from ..graph import gemm_to_matmul, quiet
from .config import Backend, Precision
from .onnxruntime_static import ort_int8
from .recipe import Built, Recipe, register


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
