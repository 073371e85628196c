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
from .recipe import Built, Feeds, Job, Recipe, described, register


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


def _nncf_int8(xml: Path, out_xml: Path, calib: list[Feeds], cfg: QuantConfig, ranges: str = "") -> dict[str, Any]:
    """`ranges`: NNCF's activation range estimator by name (RangeEstimatorParametersSet); "" its default."""
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
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    overflow_fix = OverflowFix.FIRST_LAYER if has_int8_dot_product() else OverflowFix.ENABLE
    extra: dict[str, Any] = {"ignored_scope": scope} if scope else {}
    extra["advanced_parameters"] = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant),
        overflow_fix=overflow_fix,
        **({"activations_range_estimator_params": getattr(RangeEstimatorParametersSet, ranges)} if ranges else {}),
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
        "activation_ranges": ranges.lower() or "nncf's default (min-max)",
        "overflow_fix": f"{overflow_fix.value} (7-bit weights{'' if has_int8_dot_product() else ': this CPU has no VNNI'})",
    }


def nncf_int8(job: Job, ranges: str = "") -> Built:
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
    recipe = _nncf_int8(xml, w.stage(rel), job.calib, job.cfg, ranges)
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


def _bf16_cpu() -> bool:
    """Float ops in bf16 are chosen where the CPU runs bf16 natively. A bundle moved to a CPU without
    it runs them in f32: OpenVINO's CPU plugin keeps f32 when a bf16 hint names what it cannot run."""
    from ...runtimes.backends import get_backend

    return get_backend("openvino").cpu_supports("bf16")


def _f32_float_ops(job: Job, built: Built) -> Built:
    """The same graph with its float ops in f32: the fallback of a bf16 hint."""
    recipe = {k: v for k, v in built.recipe.items() if k != "float_ops"}
    return Built(files=built.files, runtime={"INFERENCE_PRECISION_HINT": "f32"}, recipe=recipe)


def weight_only_bf16(job: Job) -> Built:
    """Weight-only INT8 with the float compute in bf16 where the CPU runs it natively (f32 if the
    variant then loses its token gate). A VLM decoder's prefill is compute-bound: SmolVLM-256M twin,
    1,133 tokens, AVX-512 BF16 EPYC, 1.7-2.5 s -> 0.9-1.1 s; steps 11.5-21 -> 13-17 ms; greedy tokens
    with weight-only vision 100% of fp32's either way."""
    built = weight_only(job)
    if _bf16_cpu():
        built.runtime = {"INFERENCE_PRECISION_HINT": "bf16"}
        built.recipe["float_ops"] = "bf16 (this CPU runs bf16 natively)"
        built.fallback = lambda job, first=built: _f32_float_ops(job, first)
    return built


def static_else_weight_only(job: Job) -> Built:
    """Static INT8 where it keeps the gate, else weight-only: a compute-bound tower gets INT8 units
    when its activations survive 8 bits, and its weights shrunk when they do not (the static try's
    cosine recorded beside). Activation ranges from histograms: on the SmolVLM-256M twin's held-out
    tiles, min cosine vs fp32 0.9907 with NNCF's default min-max, 0.9992 with histograms (mean-quantile
    0.9879), at the same speed (385 / 411 / 384 ms a tile, one run each)."""
    built = nncf_int8(job, ranges="HISTOGRAM")
    if _bf16_cpu():
        # the ops left in float (attention, norms) in bf16 where the CPU runs it natively: SmolVLM-256M
        # twin, AVX-512 BF16 EPYC, 394 -> 352 ms a tile, held-out tile cosine 0.99874 -> 0.99870
        built.runtime = {"INFERENCE_PRECISION_HINT": "bf16"}
        built.recipe["float_ops"] = "bf16 (this CPU runs bf16 natively)"
    par = job.fidelity(job.w.stage_dir / built.files[0], built.runtime, "openvino")
    if par["cosine"] >= job.gate_at:
        built.parity, built.fallback = par, weight_only  # the tokens' gate has the last word
        return built
    job.log(f"{job.component}: static INT8 cosine {par['cosine']:.5f} < {job.gate_at}: weight-only INT8 instead")
    fallback = weight_only(job)  # written over the static graph: same files
    fallback.recipe["replaced"] = {
        "build": described(built.recipe),
        "cosine": round(par["cosine"], 5),
        "why": f"its cosine vs fp32 {par['cosine']:.5f} < {job.gate_at}",
    }
    return fallback


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
STATIC_ELSE_WEIGHT_ONLY = register(
    Recipe(
        name="int8-static-else-weight-only",
        precision=Precision.INT8,
        backend=Backend.OPENVINO,
        calibration=True,
        exclusions=True,
        build=static_else_weight_only,
        summary="NNCF static INT8 where it keeps the gate, else weight-only INT8",
    )
)
WEIGHT_ONLY_BF16 = register(
    Recipe(
        name="int8-weight-only-bf16",
        precision=Precision.INT8,
        backend=Backend.OPENVINO,
        calibration=False,
        exclusions=False,
        build=weight_only_bf16,
        summary="NNCF weight-only INT8, float ops in bf16 where the CPU runs it natively",
    )
)
