"""Data-free dynamic INT8 of decoders: Gemm rewritten to MatMul, then ORT's dynamic quantizer."""

from __future__ import annotations

from pathlib import Path

from ...errors import require
from ..graph import gemm_to_matmul, quiet


def _ort_int8_matmul(src: Path, w, comp: str) -> tuple[list[str], dict, dict]:
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
    return (
        [rel],
        {},
        {
            "mode": "dynamic",
            "weights": "int8 per-channel symmetric",
            "activations": "uint8 dynamic",
            "ops": "MatMul (Gemm rewritten to MatMul: %d)" % n_gemm,
            "tool": "onnxruntime.quantization",
        },
    )
