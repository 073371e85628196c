"""OpenVINO IR variants in float: fp16-compressed weights, or the fp32 IR with bf16 compute."""

from __future__ import annotations

from ...common.telemetry import require_openvino
from .config import Backend, Precision
from .recipe import Built, Job, Recipe, register


def fp16(job: Job) -> Built:
    ov = require_openvino()
    rel = f"openvino/{job.component}.fp16.xml"
    ov.save_model(ov.convert_model(str(job.src)), str(job.w.stage(rel)), compress_to_fp16=True)
    return Built(
        files=[rel, rel[:-4] + ".bin"],
        runtime={"INFERENCE_PRECISION_HINT": "f32"},
        recipe={"weights": "fp16 (compressed IR)", "compute": "f32 on CPU, fp16 on GPU"},
    )


def bf16(job: Job) -> Built:
    """The fp32 IR (shared with the fp32 variant) with a bf16 compute hint."""
    from ...runtimes.backends import get_backend

    built = get_backend("openvino").build(job.src, job.w.stage_dir, "bf16", job.component)
    return Built(
        files=built.files,
        runtime=built.runtime,
        recipe={"weights": "f32 IR", "compute": "bf16 (INFERENCE_PRECISION_HINT)"},
    )


FP16 = register(
    Recipe(
        name="fp16-openvino",
        precision=Precision.FP16,
        backend=Backend.OPENVINO,
        calibration=False,
        exclusions=False,
        build=fp16,
        summary="fp16-compressed IR",
    )
)
BF16 = register(
    Recipe(
        name="bf16-openvino",
        precision=Precision.BF16,
        backend=Backend.OPENVINO,
        calibration=False,
        exclusions=False,
        build=bf16,
        summary="the fp32 IR with bf16 compute",
    )
)
