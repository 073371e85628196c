"""fp16 ONNX for the CUDA / TensorRT execution providers."""

from __future__ import annotations

from pathlib import Path

from ...errors import require
from ..graph import externalize_weights, quiet


def _ort_fp16(src: Path, w, comp: str) -> tuple[list[str], dict, dict]:
    onnx = require("onnx", "export")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    rel = f"onnxruntime/{comp}.fp16.onnx"
    with quiet():
        m16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(m16, str(w.stage(rel)))
    data = externalize_weights(w.stage(rel))
    return (
        [rel] + ([f"onnxruntime/{data}"] if data else []),
        {},
        {
            "weights": "fp16",
            "compute": "fp16",
            "io": "fp32 (KV cache included)",
            "note": "for the CUDA / TensorRT execution providers; the CPU EP runs fp16 slowly",
        },
    )
