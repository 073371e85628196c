"""fp16 ONNX for the CUDA / TensorRT execution providers."""

from __future__ import annotations

from ...errors import require
from ..graph import externalize_weights, quiet
from .config import Backend, Precision
from .recipe import Built, Job, Recipe, register


def fp16(job: Job) -> Built:
    src, w, comp = job.src, job.w, job.component
    onnx = require("onnx", "export")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    rel = f"onnxruntime/{comp}.fp16.onnx"
    with quiet():
        m16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(m16, str(w.stage(rel)))
    data = externalize_weights(w.stage(rel))
    return Built(
        files=[rel] + ([f"onnxruntime/{data}"] if data else []),
        recipe={
            "weights": "fp16",
            "compute": "fp16",
            "io": "fp32 (KV cache included)",
            "note": "for the CUDA / TensorRT execution providers; the CPU EP runs fp16 slowly",
        },
    )


FP16 = register(
    Recipe(
        name="fp16-onnxruntime",
        precision=Precision.FP16,
        backend=Backend.ONNXRUNTIME,
        calibration=False,
        exclusions=False,
        build=fp16,
        summary="fp16 weights and compute, fp32 I/O",
    )
)
