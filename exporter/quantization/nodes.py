"""The weight nodes INT8 recipes quantize, exclusion patterns, and what a quantized graph runs."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

from ...errors import require

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
