"""Quantization recipes x backends: each recipe is one way of making a (backend, precision)
variant from a bundle's fp32 ONNX, with what it needs (calibration data or none) and the
graph-level code that builds it. Families declare which recipe serves each (backend, precision)
(their pipeline's `quantization` table); exporter/quantize.py is the one driver for all.

INT8 on ONNX Runtime (CPU): static Q/DQ (uint8 asymmetric activations from calibration, int8
per-channel weights; accuracy-aware mode keeps the most sensitive layer groups float) or dynamic.
Captioners' decoders are memory-bound at batch 1 (every weight read once per token), so their
variants are data-free: dynamic INT8 with Gemm rewritten to MatMul, int4 MatMulNBits, OpenVINO
weight-only INT8. TensorRT gets a symmetric int8 Q/DQ ONNX (the form it accepts), built and
checked here with ONNX Runtime; the plan is built on the GPU. No torch here.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, require
from .graph import externalize_weights, gemm_to_matmul, quiet

METHODS = ("minmax", "entropy", "percentile")
MODES = ("static", "dynamic", "best")  # best: exporter/choose.py tries the recipes here
# Ops whose weights are quantized. Adds, LayerNorm, Softmax and activation x activation
# MatMuls (attention scores) stay float: measured to cost accuracy for little speed.
WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
# ONNX Runtime's dynamic quantizer (its IntegerOps registry) converts only these; a Gemm stays float.
# (The TorchScript-exported CLIP / text graphs have no Gemm: Linear layers are MatMul [+ Add].)
DYNAMIC_OPS = ("MatMul", "Conv")
# integer-kernel nodes in a quantized graph: what really runs in int8
INTEGER_OPS = (
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "QLinearConv",
)
# Static INT8 keeps each transformer block's MLP down-projection in float by default: its input
# (after GELU) carries the activation outliers. Measured on all-MiniLM-L6-v2, 64 calibration
# sentences, held-out mean cosine vs fp32: whole graph 0.941 (minmax; entropy 0.939,
# percentile 0.944) -> with these 6 MatMuls float 0.991. `--exclude none` quantizes them too.
DEFAULT_EXCLUDE = [r"mlp/fc2/", r"layer\.\d+/output/dense/"]
# Static INT8 never quantizes a graph output (float_outputs): quantize_static puts a Q/DQ pair
# on every quantized MatMul's output, the last projection's included, which rounds the returned
# embedding to 8 bits inside a range calibrated on the calibration texts. Zero-shot prompts
# ("a photo of a red circle") land outside it: on the clip-shapes fixture 4.1% of the prompt
# embedding values were clipped, prompt cosine vs fp32 mean 0.9956 min 0.9825, and zero-shot
# top-1 fell 0.990 -> 0.983 (text tower only: vision INT8 alone kept 0.990). With the output
# float (inputs and weights of that MatMul still int8): cosine mean 0.9998 min 0.9994, top-1
# 0.990 = fp32 (minmax, entropy and percentile alike). Note ORT's entropy calibrator runs with
# 128 histogram bins and 128 quantized bins (not settable through quantize_static): unless the
# histogram grows while collecting, its one candidate threshold is the min/max range (on this
# fixture every text tensor got the same scale under entropy as under minmax).


@dataclass
class QuantConfig:
    precision: str
    backend: str = "onnxruntime"
    mode: str = "static"
    calib: str | None = None
    method: str = "minmax"
    samples: int = 32
    exclude: list[str] | None = None  # None: DEFAULT_EXCLUDE for static INT8; [] quantizes everything
    min_cosine: float | None = None
    min_agreement: float = 0.8  # generative variants: share of fp32's greedy tokens they must reproduce
    components: list[str] | None = None
    threads: int | None = None
    mode_given: bool = False  # --mode on the command line: said when the recipe has no modes
    smooth_quant: float = -1.0  # NNCF SmoothQuant alpha for MatMul; -1: off (measured: see NNCF_PRESET_SMOOTH_QUANT)


def weight_nodes(model) -> list[Any]:
    """MatMul/Gemm/Conv nodes with a constant weight: the ones worth quantizing."""
    inits = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type in WEIGHT_OPS and len(n.input) > 1 and (n.input[1] in inits or n.input[1] in consts):
            out.append(n)
    return out


def quantized_counts(path: Path) -> dict[str, Any]:
    """What a quantized graph really runs in int8: integer nodes by op type, and the weight
    MatMul/Gemm/Conv nodes left in float."""
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in INTEGER_OPS:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"quantized_nodes": sum(ops.values()), "quantized_ops": ops, "float_weight_nodes": len(weight_nodes(model))}


def matches(node, patterns: list[str]) -> bool:
    """An exclusion pattern is an op type (e.g. Gemm) or a glob / regex on the node name."""
    for p in patterns:
        if p == node.op_type or fnmatch.fnmatch(node.name, p):
            return True
        try:
            if re.search(p, node.name):
                return True
        except re.error:
            continue
    return False


def layer_groups(nodes) -> dict[str, list[str]]:
    """Candidate groups to keep in float: by role across layers (e.g. mlp/fc2) and by layer."""
    groups: dict[str, list[str]] = {}
    for n in nodes:
        role = re.sub(r"layers?\.\d+/", "", n.name)
        groups.setdefault(f"role {role}", []).append(n.name)
        m = re.search(r"layers?\.(\d+)/", n.name)
        if m:
            groups.setdefault(f"layer {m.group(1)}", []).append(n.name)
    return {k: v for k, v in groups.items() if len(v) < len(nodes)}


# -- builders ----------------------------------------------------------------------------


class OrtInt8:
    """Static Q/DQ or dynamic INT8 through onnxruntime.quantization."""

    def __init__(self, src: Path, cfg: QuantConfig, calib: list[dict[str, np.ndarray]] | None, workdir: Path):
        self.q = require("onnxruntime.quantization", "core")
        onnx = require("onnx", "export")
        self.src, self.cfg, self.calib, self.workdir = src, cfg, calib, workdir
        model = onnx.load(str(src), load_external_data=False)
        self.nodes = [n for n in weight_nodes(model) if not matches(n, cfg.exclude)]
        if cfg.mode == "dynamic":  # ORT's dynamic quantizer leaves Gemm float: not counted, not offered as a group
            self.nodes = [n for n in self.nodes if n.op_type in DYNAMIC_OPS]
        if not self.nodes:
            raise InputError(
                "--exclude leaves nothing to quantize"
                if cfg.mode == "static"
                else f"{src.name}: no {'/'.join(DYNAMIC_OPS)} weights left for dynamic INT8 (Gemm stays float): use static INT8"
            )
        self.cache = workdir / "calibration.cache"

    def build(self, out: Path, keep_float: set[str] = frozenset()) -> dict[str, Any]:
        q = self.q
        names = [n.name for n in self.nodes if n.name not in keep_float]
        if self.cfg.mode == "dynamic":
            with quiet():
                q.quantize_dynamic(
                    str(self.src),
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
        method = {
            "minmax": q.CalibrationMethod.MinMax,
            "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile,
        }[self.cfg.method]
        reader = _Reader(self.calib)
        with quiet():
            q.quantize_static(
                str(self.src),
                str(out),
                reader,
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                nodes_to_quantize=names,
                op_types_to_quantize=list(WEIGHT_OPS),
                calibrate_method=method,
                calibration_cache_path=str(self.cache),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        freed = float_outputs(out)
        return {
            "mode": "static",
            "format": "QDQ",
            "method": self.cfg.method,
            # ORT's CPU int8 kernels are fast with uint8 activations; TensorRT needs symmetric int8 (GPU variant)
            "activations": "uint8 asymmetric",
            "weights": "int8 per-channel symmetric",
            "quantized_nodes": len(names),
            "float_outputs": freed,
        }


def float_outputs(path: Path) -> list[str]:
    """Drop the Q/DQ pair quantize_static puts on each graph output (the last MatMul's result:
    the embedding itself), so that the tensor handed to the caller is the float MatMul result.
    It buys no speed (the caller reads float) and costs fidelity: its range is calibrated on
    the calibration inputs, and anything outside it is clipped. Returns the outputs freed."""
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    freed, drop, rename = [], [], {}
    for out in g.output:
        dq = prod.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        qn = prod.get(dq.input[0])
        if qn is None or qn.op_type != "QuantizeLinear" or uses.get(qn.output[0], 0) != 1:
            continue
        drop += [qn, dq]
        rename[qn.input[0]] = out.name
        freed.append(out.name)
    if not freed:
        return []
    for n in drop:
        g.node.remove(n)
    for n in g.node:
        for seq in (n.input, n.output):
            for k, name in enumerate(seq):
                if name in rename:
                    seq[k] = rename[name]
    onnx.save(model, str(path))
    return freed


def _reader_base():
    return require("onnxruntime.quantization", "core").CalibrationDataReader


class _Reader(_reader_base()):
    def __init__(self, feeds: list[dict[str, np.ndarray]] | None):
        self.feeds = list(feeds or [])
        self.i = 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def symmetric_qdq(src: Path, out: Path, calib: list[dict[str, np.ndarray]], cfg: QuantConfig) -> dict[str, Any]:
    """Q/DQ with int8 activations and weights, both symmetric (zero point 0): the only INT8
    Q/DQ form TensorRT accepts. Slower than uint8 in ORT on CPU, so CPU bundles never get it."""
    q = require("onnxruntime.quantization", "core")
    onnx = require("onnx", "export")
    nodes = [n.name for n in weight_nodes(onnx.load(str(src), load_external_data=False)) if not matches(n, cfg.exclude)]
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[cfg.method]
    q.quantize_static(
        str(src),
        str(out),
        _Reader(calib),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QInt8,
        weight_type=q.QuantType.QInt8,
        nodes_to_quantize=nodes,
        op_types_to_quantize=list(WEIGHT_OPS),
        calibrate_method=method,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    freed = float_outputs(out)
    return {
        "mode": "static",
        "format": "QDQ",
        "method": cfg.method,
        "activations": "int8 symmetric",
        "weights": "int8 per-channel symmetric",
        "for": "tensorrt",
        "quantized_nodes": len(nodes),
        "float_outputs": freed,
    }


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


def _nncf_int8(xml: Path, out_xml: Path, calib: list[dict[str, np.ndarray]], cfg: QuantConfig) -> dict[str, Any]:
    ov = require("openvino", "openvino")
    nncf = require("nncf", "openvino")
    model = ov.Core().read_model(str(xml))
    scope = None
    if cfg.exclude:
        types = [p for p in cfg.exclude if re.fullmatch(r"[A-Z][A-Za-z0-9]*", p)]
        pats = nncf_patterns([p for p in cfg.exclude if p not in types])
        scope = nncf.IgnoredScope(types=types, patterns=pats, validate=False)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    extra: dict[str, Any] = {"ignored_scope": scope} if scope else {}
    extra["advanced_parameters"] = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant)
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
    }


# -- data-free builders (captioners) -----------------------------------------------------


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


# int4 decoder: block-wise symmetric 4-bit weights, int8 compute (accuracy_level 4, VNNI). Measured on
# the ViT-GPT2 twin: decoder step 6.1 ms vs 8.4-9.1 ms dynamic INT8 (2 cores); the encoder's 197-row
# GEMMs ran 2.7x slower as MatMulNBits (198 vs 73 ms) than dynamic INT8, so the encoder stays INT8.
INT4_BLOCK = 32


def _ort_int4(src: Path, w, comp: str) -> tuple[list[str], dict, dict]:
    onnx = require("onnx", "export")
    if comp != "decoder":
        why = "int4 MatMulNBits measured 2.7x slower than dynamic INT8 on encoder GEMMs"
        rel = f"onnxruntime/{comp}.int8.onnx"
        if rel in w.files:  # the int8 variant's graph: the same recipe, stored once
            return [rel], {}, {"weights": "int8 (the int8 variant's dynamic INT8 graph)", "note": why}
        files, runtime, recipe = _ort_int8_matmul(src, w, comp)
        return files, runtime, dict(recipe, note=why)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    n_gemm = gemm_to_matmul(model)
    with quiet():
        q = MatMulNBitsQuantizer(model, bits=4, block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4)
        q.process()
    rel = f"onnxruntime/{comp}.int4.onnx"
    onnx.save(q.model.model, str(w.stage(rel)))
    return (
        [rel],
        {},
        {
            "mode": "weight-only",
            "weights": f"int4 symmetric, blocks of {INT4_BLOCK}",
            "compute": "int8 activations (accuracy_level 4)",
            "ops": "MatMul (Gemm rewritten to MatMul: %d) -> MatMulNBits" % n_gemm,
            "tool": "onnxruntime.quantization.matmul_nbits_quantizer",
        },
    )


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


def _ov_variant(src: Path, w, comp: str, precision: str) -> tuple[list[str], dict, dict]:
    ov = require("openvino", "openvino")
    if precision == "bf16":  # the fp32 IR (shared) with a bf16 compute hint
        from ..runtimes.backends import openvino as ov_backend

        built = ov_backend.build(src, w.stage_dir, "bf16", comp)
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


def _accuracy_aware(builder: OrtInt8, out: Path, fidelity, target: float, log, comp: str):
    """Rank layer groups by how much keeping them float helps, then keep the fewest float
    (greedily, most helpful first) until the cosine target is met."""
    groups = layer_groups(builder.nodes)
    scores = []
    for name, nodes in groups.items():
        builder.build(out, keep_float=set(nodes))
        scores.append((fidelity(out)["cosine_mean"], name))
    scores.sort(reverse=True)
    kept: set[str] = set()
    chosen: list[str] = []
    par = None
    for _cos, name in scores:
        kept |= set(groups[name])
        chosen.append(name)
        builder.build(out, keep_float=kept)
        par = fidelity(out)
        log(f"{comp}: + float {name} ({len(kept)} nodes float) -> cosine mean {par['cosine_mean']:.5f}")
        if par["cosine_mean"] >= target:
            break
    if par is None or par["cosine_mean"] < target:
        log(f"{comp}: target {target} not reachable with INT8 layers left; all candidate groups kept float")
    return sorted(kept), par


# -- the recipes ----------------------------------------------------------------------------


@dataclass
class Job:
    """One component of one bundle, being quantized: what a recipe's build gets."""

    src: Path  # the fp32 ONNX (staged)
    w: Any  # the BundleWriter
    component: str
    cfg: Any  # QuantConfig
    calib: list[dict[str, np.ndarray]] | None
    workdir: Path
    fidelity: Callable[..., dict[str, Any]]  # (path, runtime={}, backend="onnxruntime") -> parity vs fp32
    log: Callable[[str], None]


@dataclass
class Built:
    files: list[str]
    runtime: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None  # set when the build measured it (accuracy-aware search)
    tensorrt: bool = False  # a Q/DQ ONNX for `mmdeploy build` on the GPU, not a variant that runs here


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str
    backend: str
    calibration: bool  # needs --calib
    exclusions: bool  # honours --exclude (and records calibration / exclusions in the artifact)
    build: Callable[[Job], Built]
    summary: str


def _ort_int8_calibrated(job: Job) -> Built:
    rel = f"onnxruntime/{job.component}.int8.onnx"
    (job.workdir / job.component).mkdir(parents=True, exist_ok=True)
    builder = OrtInt8(job.src, job.cfg, job.calib, job.workdir / job.component)
    recipe = builder.build(job.w.stage(rel))
    par = job.fidelity(job.w.stage_dir / rel)
    job.log(
        f"{job.component}: int8 {recipe['mode']} cosine mean {par['cosine_mean']:.5f} min {par['cosine']:.5f} vs fp32"
    )
    kept: list[str] = []
    if job.cfg.min_cosine is not None and par["cosine_mean"] < job.cfg.min_cosine:
        kept, par = _accuracy_aware(builder, job.w.stage(rel), job.fidelity, job.cfg.min_cosine, job.log, job.component)
    recipe["kept_float"] = kept
    return Built([rel], {}, recipe, par)


def _ov_nncf(job: Job) -> Built:
    from ..runtimes.backends import openvino as ov_backend

    w, comp = job.w, job.component
    base = next(
        (a for a in w.artifacts if a.component == comp and a.backend == "openvino" and a.precision in ("fp32", "bf16")),
        None,
    )
    if base is not None:
        xml = w.stage_dir / base.path
    else:
        built = ov_backend.build(job.src, w.stage_dir, "fp32", comp)
        for f in built.files:
            if f not in w.files:
                w.register(f)
        xml = w.stage_dir / built.path
    rel = f"openvino/{comp}.int8.xml"
    job.log(f"{comp}: NNCF quantization on {len(job.calib)} samples")
    recipe = _nncf_int8(xml, w.stage(rel), job.calib, job.cfg)
    return Built([rel, rel[:-4] + ".bin"], {"INFERENCE_PRECISION_HINT": "f32"}, recipe)


def _trt_qdq(job: Job) -> Built:
    rel = f"tensorrt/{job.component}.int8.qdq.onnx"
    recipe = symmetric_qdq(job.src, job.w.stage(rel), job.calib, job.cfg)
    return Built([rel], {}, recipe, tensorrt=True)


def _files(fn) -> Callable[[Job], Built]:
    """A builder written as (src, w, component) -> (files, runtime, recipe)."""
    return lambda job: Built(*fn(job.src, job.w, job.component))


def _ov(precision: str) -> Callable[[Job], Built]:
    return lambda job: Built(*_ov_variant(job.src, job.w, job.component, precision))


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "int8-static",
            "int8",
            "onnxruntime",
            True,
            True,
            _ort_int8_calibrated,
            "static Q/DQ: uint8 activations from calibration, int8 per-channel weights",
        ),
        Recipe(
            "int8-dynamic",
            "int8",
            "onnxruntime",
            False,
            True,
            _ort_int8_calibrated,
            "dynamic: int8 per-channel weights, activations quantized on the fly (MatMul, Conv)",
        ),
        Recipe(
            "int8-dynamic-matmul",
            "int8",
            "onnxruntime",
            False,
            False,
            _files(_ort_int8_matmul),
            "dynamic INT8 with Gemm rewritten to MatMul (decoder projections), data-free",
        ),
        Recipe(
            "int8-nncf",
            "int8",
            "openvino",
            True,
            True,
            _ov_nncf,
            "NNCF post-training quantization (transformer preset)",
        ),
        Recipe("int8-weight-only", "int8", "openvino", False, False, _ov("int8"), "NNCF weight-only INT8, f32 compute"),
        Recipe(
            "int8-qdq-symmetric",
            "int8",
            "tensorrt",
            True,
            True,
            _trt_qdq,
            "symmetric int8 Q/DQ ONNX for TensorRT (plan built on the GPU)",
        ),
        Recipe(
            "int4-weight-only",
            "int4",
            "onnxruntime",
            False,
            False,
            _files(_ort_int4),
            "decoder int4 MatMulNBits (blocks of 32), other components dynamic INT8",
        ),
        Recipe(
            "fp16-onnxruntime",
            "fp16",
            "onnxruntime",
            False,
            False,
            _files(_ort_fp16),
            "fp16 weights and compute, fp32 I/O",
        ),
        Recipe("fp16-openvino", "fp16", "openvino", False, False, _ov("fp16"), "fp16-compressed IR"),
        Recipe("bf16-openvino", "bf16", "openvino", False, False, _ov("bf16"), "the fp32 IR with bf16 compute"),
    )
}
