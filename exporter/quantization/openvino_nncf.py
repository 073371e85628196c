"""INT8 on OpenVINO through NNCF: post-training quantization from calibration (encoders), and
data-free weight-only compression (decoders)."""

from __future__ import annotations

import fnmatch
import logging
import re
from pathlib import Path
from typing import Any

from ...common.telemetry import require_openvino
from ..graph import quiet
from .config import Backend, Precision, QuantConfig
from .recipe import Built, Feeds, Job, Recipe, register


def nncf_patterns(patterns: list[str]) -> list[str]:
    """NNCF's ignored-scope patterns with `matches`' meaning (a glob on the whole name, or a regex
    found anywhere in it): NNCF anchors its patterns at the start of the name (re.match), so the
    default exclusions (r"mlp/fc2/") matched no OpenVINO node ("/vision_model/.../mlp/fc2/MatMul")."""
    out = []
    for p in patterns:
        out.append(fnmatch.translate(p))
        try:
            re.compile(p)
        except re.error:
            continue
        out.append(f"(?s:.*?(?:{p}))")
    return out


# NNCF's transformer preset smooths MatMul inputs (SmoothQuant, alpha 0.95). Measured, held-out
# cosine mean vs fp32 with the default exclusions, preset -> SmoothQuant off: clip-shapes text
# 0.943 (failed its 0.99 gate) -> 0.998, vision 0.9975 -> 0.9978; siglip-shapes vision 0.991 ->
# 0.996, text 0.992 -> 0.999; align-shapes text 0.9976 -> 0.9994, vision 0.9999 both; the B/32
# twin's text with everything quantized 0.9866 -> 0.99946. So INT8 on OpenVINO runs without it;
# `--mode best` still tries the preset's alpha beside it.
NNCF_PRESET_SMOOTH_QUANT = 0.95


def has_int8_dot_product() -> bool:
    """VNNI / AMX: int8 products summed in int32. Without them (AVX2 alone) x86 kernels pair u8 x s8
    products in saturating int16, so weights must stay in 7 bits (NNCF's overflow fix on every layer):
    on an AVX2-only EPYC align-shapes' OpenVINO INT8 lost 2.7 points of zero-shot top-1 without it."""
    from ...common.env import cpu_info

    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_info()["isa"]))


def _nncf_int8(xml: Path, out_xml: Path, calib: list[Feeds], cfg: QuantConfig) -> dict[str, Any]:
    ov = require_openvino()
    nncf = require_openvino("nncf")
    model = ov.Core().read_model(str(xml))
    scope = None
    if cfg.exclude:
        types = [p for p in cfg.exclude if re.fullmatch(r"[A-Z][A-Za-z0-9]*", p)]
        pats = nncf_patterns([p for p in cfg.exclude if p not in types])
        scope = nncf.IgnoredScope(types=types, patterns=pats, validate=False)
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    overflow_fix = OverflowFix.FIRST_LAYER if has_int8_dot_product() else OverflowFix.ENABLE
    extra: dict[str, Any] = {"ignored_scope": scope} if scope else {}
    extra["advanced_parameters"] = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant), overflow_fix=overflow_fix
    )
    logging.getLogger("nncf").setLevel(logging.WARNING)  # after import: nncf sets its own level
    with quiet():  # its progress bars and per-node INFO lines
        qmodel = nncf.quantize(
            model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib), **extra
        )
    ov.save_model(qmodel, str(out_xml), compress_to_fp16=False)
    sq = "off" if cfg.smooth_quant < 0 else f"alpha {cfg.smooth_quant} (MatMul)"
    return {
        "mode": "static",
        "tool": f"nncf {nncf.__version__}",
        "preset": "transformer (mixed)",
        "samples": len(calib),
        "smooth_quant": sq,
        "overflow_fix": f"{overflow_fix.value} (7-bit weights{'' if has_int8_dot_product() else ': this CPU has no VNNI'})",
    }


def nncf_int8(job: Job) -> Built:
    from ...runtimes.backends import get_backend

    w, comp = job.w, job.component
    base = next(
        (a for a in w.artifacts if a.component == comp and a.backend == "openvino" and a.precision in ("fp32", "bf16")),
        None,
    )
    if base is not None:
        xml = w.stage_dir / base.path
    else:
        built = get_backend("openvino").build(job.src, w.stage_dir, "fp32", comp)
        for f in built.files:
            if f not in w.files:
                w.register(f)
        xml = w.stage_dir / built.path
    rel = f"openvino/{comp}.int8.xml"
    job.log(f"{comp}: NNCF quantization on {len(job.calib)} samples")
    recipe = _nncf_int8(xml, w.stage(rel), job.calib, job.cfg)
    return Built(files=[rel, rel[:-4] + ".bin"], runtime={"INFERENCE_PRECISION_HINT": "f32"}, recipe=recipe)


def weight_only(job: Job) -> Built:
    ov = require_openvino()
    nncf = require_openvino("nncf")
    rel = f"openvino/{job.component}.int8.xml"
    logging.getLogger("nncf").setLevel(logging.WARNING)  # after import: nncf sets its own level
    with quiet():
        qm = nncf.compress_weights(ov.convert_model(str(job.src)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(qm, str(job.w.stage(rel)), compress_to_fp16=False)
    return Built(
        files=[rel, rel[:-4] + ".bin"],
        runtime={"INFERENCE_PRECISION_HINT": "f32"},
        recipe={
            "mode": "weight-only",
            "weights": "int8 asymmetric per-channel",
            "compute": "f32",
            "tool": f"nncf {nncf.__version__} compress_weights",
        },
    )


NNCF = register(
    Recipe(
        name="int8-nncf",
        precision=Precision.INT8,
        backend=Backend.OPENVINO,
        calibration=True,
        exclusions=True,
        build=nncf_int8,
        summary="NNCF post-training quantization (transformer preset)",
    )
)
WEIGHT_ONLY = register(
    Recipe(
        name="int8-weight-only",
        precision=Precision.INT8,
        backend=Backend.OPENVINO,
        calibration=False,
        exclusions=False,
        build=weight_only,
        summary="NNCF weight-only INT8, f32 compute",
    )
)
