"""What a call costs, beside what it took: multiply-accumulates of the graph at the call's shapes and
the bytes of the variant's weights, so a row says how far it is from the hardware (GMAC/s reached),
not only how it compares with PyTorch."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..common.timing import significant
from ..errors import require

COUNTED = ("MatMul", "Gemm", "Conv", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv")


def _dims(vi) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None
        out.append(int(d.dim_value))
    return out


def _fixed(model, given: dict[str, tuple[int, ...]]):
    for inp in model.graph.input:
        if inp.name in given:
            for d, v in zip(inp.type.tensor_type.shape.dim, given[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    return model


def _count(g) -> tuple[int, int, int]:
    shape = {vi.name: _dims(vi) for vi in (*g.input, *g.value_info, *g.output)}
    shape.update({i.name: list(i.dims) for i in g.initializer})
    total, counted, uncounted = 0, 0, 0
    for n in g.node:
        if n.op_type not in COUNTED:
            continue
        w_in = 3 if n.op_type.startswith("QLinear") else 1
        out, w = shape.get(n.output[0]), shape.get(n.input[w_in]) if len(n.input) > w_in else None
        if not out or not w:
            uncounted += 1
            continue
        if "Conv" in n.op_type:  # out: N, C_out, spatial...; w: C_out, C_in/group, kernel...
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            total += int(np.prod(out)) * (w[1] if trans_b else w[0])
        else:  # MatMul: out [..., M, N], w [..., K, N]
            total += int(np.prod(out)) * (w[-2] if len(w) >= 2 else w[0])
        counted += 1
    return total, counted, uncounted


@lru_cache(maxsize=32)
def macs(onnx_path: str, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> dict:
    """{"gmacs", "counted", "uncounted"}: MatMul/Gemm/Conv multiply-accumulates at these input
    shapes. ONNX's shape inference first; where it leaves nodes unresolved (the TorchScript text
    towers: all 97 MatMuls), ONNX Runtime's symbolic inference, which needs the weights loaded."""
    onnx = require("onnx", "export")
    given = dict(shapes)
    model = _fixed(onnx.load(onnx_path, load_external_data=False), given)
    try:
        total, counted, uncounted = _count(onnx.shape_inference.infer_shapes(model, data_prop=True).graph)
    except Exception:  # noqa: BLE001 - an inference failure leaves the count partial, never the bench
        total, counted, uncounted = 0, 0, 1
    if uncounted:
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            inferred = SymbolicShapeInference.infer_shapes(_fixed(onnx.load(onnx_path), given), auto_merge=True)
            total, counted, uncounted = _count(inferred.graph)
        except Exception:  # noqa: BLE001
            pass
    return {"gmacs": total / 1e9, "counted": counted, "uncounted": uncounted}


def call_cost(onnx_path: Path, feeds: dict[str, np.ndarray], files: list[Path]) -> dict:
    """Per call: GMACs at the feeds' shapes (from the fp32 graph: every variant does the same math)
    and the MB of the variant's files (its weights: read once a call when they do not fit in cache)."""
    got = macs(str(onnx_path), tuple(sorted((k, tuple(v.shape)) for k, v in feeds.items())))
    mb = sum(f.stat().st_size for f in files if f.is_file()) / 1e6
    return {
        "gmacs": float(f"{got['gmacs']:.5g}"),
        "weights_mb": round(mb, 2),
        **({"uncounted_nodes": got["uncounted"]} if got["uncounted"] else {}),
    }


CEILING_SHAPE = (256, 1024, 1024)  # M, K, N: large enough to reach the GEMM kernels' peak on a CPU


@lru_cache(maxsize=8)  # once per process and thread count: the machine does not change between benches
def ceilings(threads: int | None, seconds: float = 0.5) -> dict:
    """GMAC/s this machine's ONNX Runtime reaches on one large MatMul, fp32 and dynamic INT8 (u8 x s8):
    the ceiling a row's GMAC/s compares against (a transformer tower also runs softmax, norms and
    small GEMMs, so ~50-70% of it is near the hardware)."""
    import tempfile
    import time

    onnx = require("onnx", "export")
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..runtimes.backends import get_backend

    m, k, n = CEILING_SHAPE
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "ceiling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [w],
    )
    x = {"x": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    out = {}
    with tempfile.TemporaryDirectory(prefix="mmdeploy-ceiling-") as tmp:
        fp32, int8 = f"{tmp}/fp32.onnx", f"{tmp}/int8.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
        logging.disable(logging.WARNING)  # the quantizer's "consider pre-processing" on the root logger
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.disable(logging.NOTSET)
        for name, path in (("fp32", fp32), ("int8", int8)):
            sess = get_backend("onnxruntime").open(path, threads=threads)
            for _ in range(3):
                sess.run(x)
            times, end = [], time.perf_counter() + seconds
            while time.perf_counter() < end or len(times) < 5:
                t = time.perf_counter()
                sess.run(x)
                times.append(time.perf_counter() - t)
            out[f"{name}_gmacs_per_s"] = significant(m * k * n / float(np.median(times)) / 1e9)
    return {**out, "probe": f"onnxruntime MatMul {m}x{k}x{n}"}
