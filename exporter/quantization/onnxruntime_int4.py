"""int4 MatMulNBits decoders (other components dynamic INT8)."""

from __future__ import annotations

from ...errors import require
from ..graph import gemm_to_matmul, quiet
from .config import Backend, Precision
from .onnxruntime_dynamic import int8_matmul
from .recipe import Built, Job, Recipe, register

# int4 decoder: block-wise symmetric 4-bit weights, int8 compute (accuracy_level 4, VNNI). Measured on
# the ViT-GPT2 twin: decoder step 6.1 ms vs 8.4-9.1 ms dynamic INT8 (2 cores); the encoder's 197-row
# GEMMs ran 2.7x slower as MatMulNBits (198 vs 73 ms) than dynamic INT8, so the encoder stays INT8.
INT4_BLOCK = 32


def int4(job: Job) -> Built:
    src, w, comp = job.src, job.w, job.component
    onnx = require("onnx", "export")
    if comp != "decoder":
        why = "int4 MatMulNBits measured 2.7x slower than dynamic INT8 on encoder GEMMs"
        rel = f"onnxruntime/{comp}.int8.onnx"
        if rel in w.files:  # the int8 variant's graph: the same recipe, stored once
            return Built(files=[rel], recipe={"weights": "int8 (the int8 variant's dynamic INT8 graph)", "note": why})
        built = int8_matmul(src, w, comp)
        built.recipe["note"] = why
        return built
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    n_gemm = gemm_to_matmul(model)
    with quiet():
        q = MatMulNBitsQuantizer(model, bits=4, block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4)
        q.process()
    rel = f"onnxruntime/{comp}.int4.onnx"
    onnx.save(q.model.model, str(w.stage(rel)))
    return Built(
        files=[rel],
        recipe={
            "mode": "weight-only",
            "weights": f"int4 symmetric, blocks of {INT4_BLOCK}",
            "compute": "int8 activations (accuracy_level 4)",
            "ops": "MatMul (Gemm rewritten to MatMul: %d) -> MatMulNBits" % n_gemm,
            "tool": "onnxruntime.quantization.matmul_nbits_quantizer",
        },
    )


INT4 = register(
    Recipe(
        name="int4-weight-only",
        precision=Precision.INT4,
        backend=Backend.ONNXRUNTIME,
        calibration=False,
        exclusions=False,
        build=int4,
        summary="decoder int4 MatMulNBits (blocks of 32), other components dynamic INT8",
    )
)
