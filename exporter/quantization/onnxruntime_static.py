"""Static Q/DQ INT8 through onnxruntime.quantization, calibrated; graph outputs left float. OrtInt8's
node selection and accuracy-aware search serve the dynamic recipe too (onnxruntime_dynamic.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, require
from ..graph import quiet
from .config import Backend, Precision, QuantConfig
from .nodes import DYNAMIC_OPS, WEIGHT_OPS, layer_groups, matches, weight_nodes
from .recipe import Built, Feeds, Job, Recipe, register

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


class OrtInt8:
    """Static Q/DQ or dynamic INT8 through onnxruntime.quantization."""

    def __init__(self, src: Path, cfg: QuantConfig, calib: list[Feeds] | None, workdir: Path):
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
            # the dynamic recipe's quantizer call is its module's; imported here, not at the top:
            # onnxruntime_dynamic builds on this class (node selection, accuracy-aware search)
            from .onnxruntime_dynamic import quantize_nodes_dynamic

            return quantize_nodes_dynamic(self.src, out, names)
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


def ort_int8(job: Job) -> Built:
    """Static or dynamic INT8 (job.cfg.mode) of an encoder component; below --min-cosine, the
    accuracy-aware search keeps layer groups float."""
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
    return Built(files=[rel], recipe=recipe, parity=par)


STATIC = register(
    Recipe(
        name="int8-static",
        precision=Precision.INT8,
        backend=Backend.ONNXRUNTIME,
        calibration=True,
        exclusions=True,
        build=ort_int8,
        summary="static Q/DQ: uint8 activations from calibration, int8 per-channel weights",
    )
)
