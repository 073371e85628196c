"""quantize: add INT8 / FP16 / BF16 variants to a bundle, each with its measured fidelity.

INT8 on ONNX Runtime (CPU): dynamic (weights int8, activations quantized on the fly) or
static Q/DQ (uint8 asymmetric activations from calibration, int8 per-channel weights) through
onnxruntime.quantization. INT8 on OpenVINO: NNCF post-training quantization of the IR
(transformer preset). Accuracy-aware mode keeps the most sensitive layer groups in float
until a cosine target vs fp32 is met.

Fidelity is measured against the bundle's fp32 ONNX on held-out inputs (never the
calibration ones); the fp32 graph itself matches PyTorch to cosine >= 0.9999 (export gate).
No torch is needed here.
"""

from __future__ import annotations

import fnmatch
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.datasets import DataSet, open_dataset
from ..common.fidelity import compare
from ..errors import BackendError, InputError, require
from ..runtimes.bundle import Artifact, Bundle, BundleWriter
from ..runtimes.feeds import BundleFeeds
from ..runtimes.session import backend_module

GATES = {"int8": 0.99, "fp16": 0.999, "bf16": 0.99}
# INT8 is gated on the mean cosine over held-out items (the figure the targets are stated in);
# the min is recorded beside it. Float variants are gated on the min.
GATE_METRIC = {"int8": "cosine_mean"}
METHODS = ("minmax", "entropy", "percentile")
MODES = ("static", "dynamic")
# Ops whose weights are quantized. Adds, LayerNorm, Softmax and activation x activation
# MatMuls (attention scores) stay float: measured to cost accuracy for little speed.
WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
# ONNX Runtime's dynamic quantizer (its IntegerOps registry) converts only these; a Gemm stays float.
# (The TorchScript-exported CLIP / text graphs have no Gemm: Linear layers are MatMul [+ Add].)
DYNAMIC_OPS = ("MatMul", "Conv")
# integer-kernel nodes in a quantized graph: what really runs in int8
INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv")
HELD_OUT = {"images": 16, "texts": 32}  # held-out items per component kind
# Static INT8 keeps each transformer block's MLP down-projection in float by default: its input
# (after GELU) carries the activation outliers. Measured on all-MiniLM-L6-v2, 64 calibration
# sentences, held-out mean cosine vs fp32: whole graph 0.941 (minmax; entropy 0.939,
# percentile 0.944) -> with these 6 MatMuls float 0.991. `--exclude none` quantizes them too.
DEFAULT_EXCLUDE = [r"mlp/fc2/", r"layer\.\d+/output/dense/"]


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
    components: list[str] | None = None
    threads: int | None = None


# -- calibration and held-out data -------------------------------------------------------


def calibration_data(spec: str | None, component: str, kind: str) -> DataSet:
    """The calibration set for one component (kind: images / texts); a folder without texts
    calibrates the text tower on the built-in real captions rather than failing."""
    if spec is None:
        raise InputError("static INT8 needs calibration data: --calib DIR|FILE|shapes (or --mode dynamic)")
    data = open_dataset(spec, split="train")
    if kind == "images" and not data.images:
        raise InputError(f"--calib {spec}: the {component} component needs images, and {spec} has only text")
    if kind == "texts" and not data.texts:
        if not data.images:
            raise InputError(f"--calib {spec} has neither images nor texts")
        from ..common.datasets.photos import CAPTIONS

        data = DataSet(name="built-in captions", texts=list(CAPTIONS))
    return data


def held_out_data(kinds) -> DataSet:
    """Inputs for the fidelity check that the calibration never saw (kinds: the components' input kinds)."""
    from ..errors import MMDeployError

    if "images" not in kinds:
        return open_dataset("sentences", split="test")  # calibration uses the train half
    try:  # calibration reads the train splits (photos/train, shapes/train), never these
        return open_dataset("photos", split="test")
    except MMDeployError:
        return open_dataset("shapes", split="test")


# -- graph helpers -----------------------------------------------------------------------


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


def _ort_session(path: Path, threads: int | None):
    return backend_module("onnxruntime").open(path, {}, threads)


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
            raise InputError("--exclude leaves nothing to quantize" if cfg.mode == "static" else
                             f"{src.name}: no {'/'.join(DYNAMIC_OPS)} weights left for dynamic INT8 (Gemm stays float): use static INT8")
        self.cache = workdir / "calibration.cache"

    def build(self, out: Path, keep_float: set[str] = frozenset()) -> dict[str, Any]:
        q = self.q
        names = [n.name for n in self.nodes if n.name not in keep_float]
        if self.cfg.mode == "dynamic":
            q.quantize_dynamic(
                str(self.src), str(out), per_channel=True, weight_type=q.QuantType.QInt8,
                nodes_to_quantize=names, op_types_to_quantize=list(DYNAMIC_OPS),
            )
            return {"mode": "dynamic", "weights": "int8 per-channel symmetric", "activations": "uint8 dynamic", **quantized_counts(out)}
        method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy, "percentile": q.CalibrationMethod.Percentile}[self.cfg.method]
        reader = _Reader(self.calib)
        q.quantize_static(
            str(self.src), str(out), reader,
            quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            nodes_to_quantize=names, op_types_to_quantize=list(WEIGHT_OPS),
            calibrate_method=method, calibration_cache_path=str(self.cache),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return {
            "mode": "static", "format": "QDQ", "method": self.cfg.method,
            # ORT's CPU int8 kernels are fast with uint8 activations; TensorRT needs symmetric int8 (GPU variant)
            "activations": "uint8 asymmetric", "weights": "int8 per-channel symmetric",
            "quantized_nodes": len(names),
        }


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
    method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy, "percentile": q.CalibrationMethod.Percentile}[cfg.method]
    q.quantize_static(
        str(src), str(out), _Reader(calib), quant_format=q.QuantFormat.QDQ, per_channel=True,
        activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
        nodes_to_quantize=nodes, op_types_to_quantize=list(WEIGHT_OPS), calibrate_method=method,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return {"mode": "static", "format": "QDQ", "method": cfg.method, "activations": "int8 symmetric", "weights": "int8 per-channel symmetric", "for": "tensorrt", "quantized_nodes": len(nodes)}


def _nncf_int8(xml: Path, out_xml: Path, calib: list[dict[str, np.ndarray]], cfg: QuantConfig) -> dict[str, Any]:
    ov = require("openvino", "openvino")
    nncf = require("nncf", "openvino")
    model = ov.Core().read_model(str(xml))
    scope = None
    if cfg.exclude:
        types = [p for p in cfg.exclude if re.fullmatch(r"[A-Z][A-Za-z0-9]*", p)]
        pats = [fnmatch.translate(p) for p in cfg.exclude if p not in types]
        scope = nncf.IgnoredScope(types=types, patterns=pats, validate=False)
    qmodel = nncf.quantize(
        model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calib), **({"ignored_scope": scope} if scope else {}),
    )
    ov.save_model(qmodel, str(out_xml), compress_to_fp16=False)
    return {"mode": "static", "tool": f"nncf {nncf.__version__}", "preset": "transformer (mixed)", "samples": len(calib)}


# -- main entry ---------------------------------------------------------------------------


def check_caption_config(cfg: QuantConfig) -> None:
    from .families.caption import check_caption_variant

    check_caption_variant(cfg.backend, cfg.precision)


def selected_components(bundle: Bundle, cfg: QuantConfig) -> list[str]:
    """--component, checked against the bundle (default: all of its components)."""
    comps = cfg.components or list(bundle.components)
    for c in comps:
        if c not in bundle.components:
            raise InputError(f"{bundle.root} has no component {c!r} (has: {', '.join(bundle.components)})")
    return comps


def _quantize_caption(bundle: Bundle, cfg: QuantConfig, log: Callable[[str], None]) -> Bundle:
    from .families.caption import add_variants

    check_caption_config(cfg)
    if (why := backend_module(cfg.backend).available()) is not None:
        raise BackendError(why)
    if cfg.calib or cfg.min_cosine:
        log("caption variants are data-free (dynamic / weight-only INT8, int4, fp16, bf16): --calib and --min-cosine are not used")
    comps = selected_components(bundle, cfg)
    return add_variants(bundle.root, cfg.precision, backends=[cfg.backend], components=tuple(comps),
                        threads=cfg.threads, log=log)


def check_config(cfg: QuantConfig) -> None:
    if cfg.exclude is None:
        cfg.exclude = list(DEFAULT_EXCLUDE) if cfg.precision == "int8" and cfg.mode == "static" else []
    if cfg.precision not in GATES:
        raise InputError(f"--precision {cfg.precision!r}: choose from {', '.join(GATES)} (int4: caption bundles only)")
    if cfg.mode not in MODES:
        raise InputError(f"--mode {cfg.mode!r}: choose from {', '.join(MODES)}")
    if cfg.method not in METHODS:
        raise InputError(f"--method {cfg.method!r}: choose from {', '.join(METHODS)}")
    supported = {
        ("onnxruntime", "int8"), ("openvino", "int8"), ("openvino", "bf16"), ("openvino", "fp16"), ("onnxruntime", "fp16"),
        ("tensorrt", "int8"),  # the symmetric Q/DQ ONNX that `mmdeploy build --backend tensorrt` compiles
    }
    if (cfg.backend, cfg.precision) not in supported:
        raise BackendError(
            f"{cfg.backend} {cfg.precision} is not built by quantize; supported: "
            + ", ".join(f"{b}/{p}" for b, p in sorted(supported))
        )
    if cfg.mode == "dynamic" and (cfg.backend != "onnxruntime" or cfg.precision != "int8"):
        raise InputError("--mode dynamic is for onnxruntime int8 only")
    if cfg.mode == "dynamic" and cfg.calib:
        raise InputError("--mode dynamic takes no --calib (it needs no data)")
    if cfg.min_cosine is not None and not 0 < cfg.min_cosine <= 1:
        raise InputError(f"--min-cosine {cfg.min_cosine}: give a value in (0, 1]")
    if cfg.samples < 1:
        raise InputError("--samples must be >= 1")
    if cfg.precision == "int8" and cfg.mode == "static" and cfg.calib is None:
        raise InputError("static INT8 needs calibration data: --calib DIR|FILE|shapes (or --mode dynamic)")


def quantize(bundle_path: str | Path, cfg: QuantConfig, log: Callable[[str], None] = lambda s: None) -> Bundle:
    bundle = Bundle.open(bundle_path)
    if bundle.family == "caption":  # encoder + decoder step with KV: the family's own (data-free) INT8 recipes
        return _quantize_caption(bundle, cfg, log)
    check_config(cfg)
    mod = backend_module(cfg.backend)
    # TensorRT's int8 input is a Q/DQ ONNX made and checked here with ORT; the plan is built on the GPU
    if cfg.backend != "tensorrt" and (why := mod.available()) is not None:
        raise BackendError(why)
    if cfg.backend == "tensorrt" and "tensorrt" not in bundle.manifest:
        raise InputError(f"{bundle.root} was exported for cpu: export with --target gpu (or jetson-*) for TensorRT")
    comps = selected_components(bundle, cfg)
    feeder = BundleFeeds(bundle)
    held = held_out_data(set(feeder.kinds.values()))
    gate = cfg.min_cosine or GATES[cfg.precision]
    t0 = time.perf_counter()
    with BundleWriter(bundle.root, base=bundle) as w, tempfile.TemporaryDirectory(prefix="mmdeploy-q-") as tmp:
        for comp in comps:
            src = w.stage_dir / bundle.components[comp]["onnx"]
            out_name = bundle.components[comp]["outputs"][0]["name"]
            eval_feeds = feeder.feeds(comp, HELD_OUT[feeder.kinds[comp]], held)
            ref = _ort_session(src, cfg.threads).run(eval_feeds)[out_name]
            calib = None
            if cfg.precision == "int8" and cfg.mode == "static":
                cdata = calibration_data(cfg.calib, comp, feeder.kinds[comp])
                calib = feeder.samples(comp, cdata, cfg.samples, same_shape=cfg.method != "minmax")
                log(f"{comp}: calibrating on {len(calib)} samples of {cdata.name} ({cfg.method})")

            def fidelity(path: Path, runtime: dict | None = None, backend: str = "onnxruntime") -> dict[str, Any]:
                sess = backend_module(backend).open(path, runtime or {}, cfg.threads)
                return compare(ref, sess.run(eval_feeds)[out_name])

            recipe: dict[str, Any]
            runtime: dict[str, Any] = {}
            if cfg.backend == "tensorrt":
                rel = f"tensorrt/{comp}.int8.qdq.onnx"
                recipe = symmetric_qdq(src, w.stage(rel), calib, cfg)
                w.register(rel)
                par = fidelity(w.stage_dir / rel)
                par["reference"] = f"fp32 ONNX on {HELD_OUT[feeder.kinds[comp]]} held-out items of {held.name} (run in ONNX Runtime)"
                trt = w.manifest["tensorrt"]
                trt["int8_onnx"][comp] = {"path": rel, "parity": par, "gate": {"min_cosine": gate, "metric": "cosine_mean", "passed": par["cosine_mean"] >= gate}, "recipe": recipe}
                if "int8" not in trt["precisions"]:
                    trt["precisions"].append("int8")
                log(f"{comp}: symmetric int8 Q/DQ for TensorRT, cosine {par['cosine']:.5f} vs fp32 (ORT)")
                continue
            if cfg.backend == "onnxruntime" and cfg.precision == "int8":
                rel = f"onnxruntime/{comp}.int8.onnx"
                builder = OrtInt8(src, cfg, calib, Path(tmp) / comp)
                (Path(tmp) / comp).mkdir()
                recipe = builder.build(w.stage(rel))
                par = fidelity(w.stage_dir / rel)
                log(f"{comp}: int8 {recipe['mode']} cosine mean {par['cosine_mean']:.5f} min {par['cosine']:.5f} vs fp32")
                kept: list[str] = []
                if cfg.min_cosine is not None and par["cosine_mean"] < cfg.min_cosine:
                    kept, par = _accuracy_aware(builder, w.stage(rel), fidelity, cfg.min_cosine, log, comp)
                recipe["kept_float"] = kept
                files = [rel]
            elif cfg.backend == "openvino" and cfg.precision == "int8":
                base = next((a for a in bundle.find(comp, "openvino") if a.precision in ("fp32", "bf16")), None)
                xml = w.stage_dir / base.path if base else None
                if xml is None:
                    built = mod.build(src, w.stage_dir, "fp32", comp)
                    for f in built.files:
                        w.register(f)
                    xml = w.stage_dir / built.path
                rel = f"openvino/{comp}.int8.xml"
                log(f"{comp}: NNCF quantization on {len(calib)} samples")
                recipe = _nncf_int8(xml, w.stage(rel), calib, cfg)
                runtime = {"INFERENCE_PRECISION_HINT": "f32"}
                files = [rel, rel[:-4] + ".bin"]
                par = fidelity(w.stage_dir / rel, runtime, "openvino")
                log(f"{comp}: openvino int8 cosine mean {par['cosine_mean']:.5f} min {par['cosine']:.5f} vs fp32")
            elif cfg.backend == "openvino":  # bf16 (a runtime hint on the shared IR) or fp16 (compressed IR)
                if cfg.precision == "bf16":
                    built = mod.build(src, w.stage_dir, "bf16", comp)
                    rel, files, runtime = built.path, built.files, built.runtime
                    recipe = {"weights": "f32 IR", "compute": "bf16 (INFERENCE_PRECISION_HINT)"}
                else:
                    ov = require("openvino", "openvino")
                    rel = f"openvino/{comp}.fp16.xml"
                    ov.save_model(ov.convert_model(str(src)), str(w.stage(rel)), compress_to_fp16=True)
                    files, runtime = [rel, rel[:-4] + ".bin"], {"INFERENCE_PRECISION_HINT": "f32"}
                    recipe = {"weights": "fp16 (compressed IR)", "compute": "f32 on CPU, fp16 on GPU"}
                par = fidelity(w.stage_dir / rel, runtime, "openvino")
            else:  # onnxruntime fp16 (GPU targets: io stays fp32)
                onnx = require("onnx", "export")
                from onnxruntime.transformers.float16 import convert_float_to_float16

                rel = f"onnxruntime/{comp}.fp16.onnx"
                m16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
                onnx.save(m16, str(w.stage(rel)))
                files = [rel]
                recipe = {"weights": "fp16", "io": "fp32", "note": "for CUDA / TensorRT EPs; the CPU EP runs fp16 slowly"}
                par = fidelity(w.stage_dir / rel)
            for f in files:
                w.register(f)
            par["reference"] = f"fp32 ONNX on {HELD_OUT[feeder.kinds[comp]]} held-out items of {held.name}"
            metric = GATE_METRIC.get(cfg.precision, "cosine")
            passed = par[metric] >= gate
            if not passed:
                log(f"{comp}: {cfg.backend}/{cfg.precision} {metric} {par[metric]:.5f} is below the gate {gate}: kept, never chosen by default")
            recipe.update({"calibration": {"data": cfg.calib, "samples": len(calib)} if calib else None, "exclude": cfg.exclude})
            w.add_artifact(
                Artifact(
                    component=comp, backend=cfg.backend, precision=cfg.precision, path=rel, files=files,
                    runtime=runtime,
                    built_for={"target": bundle.manifest.get("target", "cpu"), cfg.backend: mod.version()},
                    parity=par, gate={"min_cosine": gate, "metric": metric, "passed": passed}, recipe=recipe,
                )
            )
        keep = [c["onnx"] for c in bundle.components.values()]
        keep += [v["path"] for v in w.manifest.get("tensorrt", {}).get("int8_onnx", {}).values()]
        w.remove_unreferenced(keep=keep)
    log(f"{cfg.backend}/{cfg.precision} added to {bundle.root} in {time.perf_counter() - t0:.1f}s")
    return Bundle.open(bundle.root)


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
    for cos, name in scores:
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
