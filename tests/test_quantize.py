"""Quantization: real Q/DQ graphs that run in ORT and OpenVINO, gates, accuracy-aware fallback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from mmdeploy.common.datasets import open_dataset
from mmdeploy.errors import BackendError, InputError
from mmdeploy.exporter.quantize import QuantConfig, quantize
from mmdeploy.runtimes import load
from mmdeploy.runtimes.backends import get_backend
from mmdeploy.runtimes.bundle import MANIFEST, Bundle
from mmdeploy.runtimes.feeds import BundleFeeds
from mmdeploy.runtimes.select import open_session


@pytest.fixture(scope="module")
def qbundle(clip_bundle, tmp_path_factory):
    """The fixture bundle plus static Q/DQ INT8 (ORT) and NNCF INT8 (OpenVINO)."""
    dst = tmp_path_factory.mktemp("q") / "clip-shapes"
    shutil.copytree(clip_bundle, dst)
    quantize(dst, QuantConfig(precision="int8", calib="shapes", samples=64, method="entropy", threads=2))
    quantize(dst, QuantConfig(precision="int8", backend="openvino", calib="shapes", samples=64, threads=2))
    return dst


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


@pytest.mark.slow  # qbundle: entropy calibration and NNCF on 64 images (100 s of setup in the last CI, most of it
# rendering the 24,000-image shapes train split per component; now only the 64: ~11 s CPU measured, busy machine)
def test_static_int8_is_qdq_and_runs_in_ort_and_openvino(qbundle):
    b = Bundle.open(qbundle)
    art = b.find("vision", "onnxruntime", "int8")[0]
    model = onnx.load(str(b.path(art.path)))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert art.recipe["mode"] == "static" and art.recipe["activations"] == "uint8 asymmetric"
    # the same Q/DQ file in both runtimes, within the INT8 gate of fp32
    inputs = BundleFeeds(b, open_dataset("shapes"))
    feeds = inputs.feeds("vision", 8)
    fp32 = open_session(b, b.find("vision", "onnxruntime", "fp32")[0]).run(feeds)["image_embeds"]
    ort = get_backend("onnxruntime").open(b.path(art.path), threads=2).run(feeds)["image_embeds"]
    ov = (
        get_backend("openvino")
        .open(b.path(art.path), threads=2, options={"INFERENCE_PRECISION_HINT": "f32"})
        .run(feeds)["image_embeds"]
    )
    assert _cos(ort, fp32).min() >= 0.99
    assert _cos(ov, fp32).min() >= 0.99


@pytest.mark.slow  # qbundle: entropy calibration and NNCF on 64 images (100 s of setup in the last CI, most of it
# rendering the 24,000-image shapes train split per component; now only the 64: ~11 s CPU measured, busy machine)
def test_every_variant_records_fidelity_and_recipe(qbundle):
    for a in Bundle.open(qbundle).find(precision="int8"):
        assert "held-out" in a.parity["reference"]
        assert a.gate["min_cosine"] == 0.99 and a.gate["metric"] == "cosine_mean"
        assert a.gate["passed"] == (a.parity["cosine_mean"] >= 0.99) and a.parity["cosine"] <= a.parity["cosine_mean"]
        assert a.recipe["calibration"] == {"data": "shapes", "samples": 64}


@pytest.mark.slow  # qbundle: entropy calibration and NNCF on 64 images (100 s of setup in the last CI, most of it
# rendering the 24,000-image shapes train split per component; now only the 64: ~11 s CPU measured, busy machine)
def test_int8_keeps_zero_shot_accuracy_on_the_fixture(qbundle):
    """INT8 top-1 within 0.5 points of fp32 on the shapes test split."""
    from .conftest import FIXTURE_MIN_TOP1, shapes_top1

    fp32 = shapes_top1(qbundle, "onnxruntime", "fp32")
    assert fp32 >= FIXTURE_MIN_TOP1
    assert shapes_top1(qbundle, "onnxruntime", "int8") >= fp32 - 0.005


def test_dynamic_int8(clip_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(clip_bundle, dst)
    quantize(dst, QuantConfig(precision="int8", mode="dynamic"))
    arts = Bundle.open(dst).find(backend="onnxruntime", precision="int8")
    assert {a.component for a in arts} == {"vision", "text"}
    assert all(a.recipe["mode"] == "dynamic" and a.passed for a in arts)
    for a in arts:  # the recipe counts the integer nodes really in the graph
        ops = [n.op_type for n in onnx.load(str(Bundle.open(dst).path(a.path))).graph.node]
        integer = sum(ops.count(t) for t in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"))
        assert a.recipe["quantized_nodes"] == integer > 0, (a.component, a.recipe)
        assert "Gemm" not in a.recipe["quantized_ops"]
    clip = load(dst, backend="onnxruntime", precision="int8")
    assert clip.embed_texts(["a photo of a red circle"]).shape[0] == 1


def test_dynamic_int8_reports_gemm_as_float(tmp_path):
    """A Gemm is not quantized by dynamic INT8 (ORT's IntegerOps have no Gemm; newer ORT, e.g. 1.32, rewrites it
    to a MatMul of its own name, which nodes_to_quantize does not list): the recipe counts only the
    nodes that became integer, and reports the Gemm as float."""
    from onnx import TensorProto, helper, numpy_helper

    from mmdeploy.exporter.quantization import OrtInt8

    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa: E731
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
            helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="gemm", transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [w("w1", 16, 32), w("w2", 8, 32), w("b2", 8)],
    )
    src = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    builder = OrtInt8(src, QuantConfig(precision="int8", mode="dynamic", exclude=[]), None, tmp_path)
    assert [n.name for n in builder.nodes] == ["mm"]
    recipe = builder.build(tmp_path / "q.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 1 and ("Gemm" in ops or "MatMul" in ops)  # the Gemm stays float
    assert recipe["quantized_nodes"] == 1 and recipe["quantized_ops"] == {"MatMulInteger": 1}
    assert recipe["float_weight_nodes"] == 1  # the Gemm


def test_accuracy_aware_meets_a_stricter_target_and_records_float_layers(clip_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(clip_bundle, dst)
    plain = quantize(
        dst, QuantConfig(precision="int8", calib="shapes", samples=16, method="minmax", components=["vision"])
    )
    c0 = plain.find("vision", "onnxruntime", "int8")[0].parity["cosine_mean"]
    assert c0 < 1.0
    target = c0 + (1 - c0) * 0.5  # halve the error
    strict = quantize(
        dst, QuantConfig(precision="int8", calib="shapes", samples=16, min_cosine=target, components=["vision"])
    )
    art = strict.find("vision", "onnxruntime", "int8")[0]
    assert art.parity["cosine_mean"] >= target > c0
    assert art.recipe["kept_float"], "accuracy-aware mode must name the layers it kept in float"
    assert art.recipe["quantized_nodes"] > 0 or len(art.recipe["kept_float"]) > 0
    assert art.gate == {"min_cosine": target, "metric": "cosine_mean", "passed": True}


def test_fp16_and_bf16_variants(clip_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(clip_bundle, dst)
    b = quantize(dst, QuantConfig(precision="fp16", backend="openvino"))
    assert all(a.parity["cosine"] >= 0.999 for a in b.find(backend="openvino", precision="fp16"))
    b = quantize(dst, QuantConfig(precision="fp16", backend="onnxruntime", components=["text"]))
    art = b.find("text", "onnxruntime", "fp16")[0]
    m = onnx.load(str(b.path(art.path)))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # io stays as it was
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert art.parity["cosine"] >= 0.999


@pytest.mark.parametrize(
    "cfg, err, needle",
    [
        (dict(precision="int8"), InputError, "needs calibration data"),
        (dict(precision="int8", method="magic", calib="shapes"), InputError, "--method 'magic'"),
        (dict(precision="int8", mode="dynamic", calib="shapes"), InputError, "takes no --calib"),
        (dict(precision="int4"), InputError, "int4: caption, vlm, vqa bundles only"),  # the generative families
        (dict(precision="bf16", backend="onnxruntime"), BackendError, "onnxruntime bf16"),
        (dict(precision="int8", calib="shapes", min_cosine=1.5), InputError, "--min-cosine"),
        (dict(precision="int8", calib="shapes", components=["audio"]), InputError, "no component 'audio'"),
    ],
)
def test_bad_flags_are_clear_errors(clip_bundle, cfg, err, needle):
    before = (clip_bundle / MANIFEST).read_bytes()
    with pytest.raises(err, match=needle.replace("(", r"\(")):
        quantize(clip_bundle, QuantConfig(**cfg))
    assert (clip_bundle / MANIFEST).read_bytes() == before


def test_bad_calibration_data(clip_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no images"):
        quantize(clip_bundle, QuantConfig(precision="int8", calib=str(tmp_path / "empty")))
    texts = tmp_path / "captions.txt"
    texts.write_text("a red circle\na blue star\n")
    with pytest.raises(InputError, match="needs images"):
        quantize(clip_bundle, QuantConfig(precision="int8", calib=str(texts), components=["vision"]))
    with pytest.raises(InputError, match="not found"):
        quantize(clip_bundle, QuantConfig(precision="int8", calib=str(tmp_path / "nope")))


def test_failed_quantization_leaves_the_bundle_as_it_was(clip_bundle, tmp_path, monkeypatch):
    dst = tmp_path / "b"
    shutil.copytree(clip_bundle, dst)
    before = json.loads((dst / MANIFEST).read_text())
    import onnxruntime.quantization as q

    def boom(*a, **k):
        raise RuntimeError("calibration crashed")

    monkeypatch.setattr(q, "quantize_static", boom)
    with pytest.raises(RuntimeError):
        quantize(dst, QuantConfig(precision="int8", calib="shapes", samples=4))
    assert json.loads((dst / MANIFEST).read_text()) == before
    Bundle.open(dst).verify_all()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
