"""OpenVINO IR variants: fp16-compressed, bf16 compute hint, NNCF weight-only INT8."""

from __future__ import annotations

import logging
from pathlib import Path

from ...errors import require
from ..graph import quiet


def _ov_variant(src: Path, w, comp: str, precision: str) -> tuple[list[str], dict, dict]:
    ov = require("openvino", "openvino")
    if precision == "bf16":  # the fp32 IR (shared) with a bf16 compute hint
        from ...runtimes.backends import get_backend

        built = get_backend("openvino").build(src, w.stage_dir, "bf16", comp)
        return built.files, built.runtime, {"weights": "f32 IR", "compute": "bf16 (INFERENCE_PRECISION_HINT)"}
    rel = f"openvino/{comp}.{precision}.xml"
    if precision == "fp16":
        ov.save_model(ov.convert_model(str(src)), str(w.stage(rel)), compress_to_fp16=True)
        return (
            [rel, rel[:-4] + ".bin"],
            {"INFERENCE_PRECISION_HINT": "f32"},
            {"weights": "fp16 (compressed IR)", "compute": "f32 on CPU, fp16 on GPU"},
        )
    nncf = require("nncf", "openvino")
    logging.getLogger("nncf").setLevel(logging.WARNING)  # after import: nncf sets its own level
    with quiet():
        qm = nncf.compress_weights(ov.convert_model(str(src)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(qm, str(w.stage(rel)), compress_to_fp16=False)
    return (
        [rel, rel[:-4] + ".bin"],
        {"INFERENCE_PRECISION_HINT": "f32"},
        {
            "mode": "weight-only",
            "weights": "int8 asymmetric per-channel",
            "compute": "f32",
            "tool": f"nncf {nncf.__version__} compress_weights",
        },
    )
