"""TensorRT: everything checkable without a GPU runs here; real engines are marked `gpu`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from mmdeploy.cli import app
from mmdeploy.errors import BackendError
from mmdeploy.runtimes.backends.tensorrt import PlanKey, check_plan, derive_profile
from mmdeploy.runtimes.bundle import Bundle

CLIP_TEXT = [
    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
]
CLIP_VISION = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 224, 224]}]


def test_profile_covers_every_dynamic_axis():
    axes = {"batch": [1, 8, 64], "sequence": [1, 77, 77]}
    assert derive_profile(CLIP_VISION, axes) == {
        "pixel_values": ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))
    }
    text = derive_profile(CLIP_TEXT, axes, overrides={"batch": [1, 4, 16]})
    assert text["input_ids"] == ((1, 1), (4, 77), (16, 77)) == text["attention_mask"]


def test_profile_errors_name_the_axis():
    with pytest.raises(BackendError, match="axis 'sequence'"):
        derive_profile(CLIP_TEXT, {"batch": [1, 8, 64]})
    with pytest.raises(BackendError, match="min <= opt <= max"):
        derive_profile(CLIP_VISION, {"batch": [8, 1, 64]})


def test_sequence_profile_is_capped_at_the_models_positions():
    assert derive_profile(CLIP_TEXT, {"batch": [1, 8, 64]}, limits={"sequence": 16})["input_ids"] == (
        (1, 1),
        (8, 16),
        (64, 16),
    )
    clipped = derive_profile(CLIP_TEXT, {"batch": [1, 8, 64], "sequence": [1, 77, 77]}, limits={"sequence": 16})
    assert clipped["attention_mask"] == ((1, 1), (8, 16), (64, 16))


def test_tensorrt_settings_take_the_sequence_from_the_tokenizer():
    from types import SimpleNamespace

    from mmdeploy.exporter.export import tensorrt_settings

    comps = {"text": {"inputs": CLIP_TEXT}, "vision": {"inputs": CLIP_VISION}}
    no_profile = SimpleNamespace(registry_entry={})  # e.g. an HF folder that is not in models.yaml
    trt = tensorrt_settings(no_profile, comps, "gpu", ["fp16"], max_sequence=16)
    assert trt["profiles"]["text"]["input_ids"] == [[1, 1], [8, 16], [32, 16]]  # not DEFAULT_PROFILE's 77
    assert trt["profiles"]["vision"]["pixel_values"][2] == [32, 3, 224, 224]
    too_long = SimpleNamespace(registry_entry={"profile": {"batch": [1, 4, 16], "sequence": [1, 64, 128]}})
    trt = tensorrt_settings(too_long, comps, "gpu", ["fp16"], max_sequence=40)
    assert trt["profiles"]["text"]["attention_mask"] == [[1, 1], [4, 40], [16, 40]]  # registry wins, clipped
    shorter = SimpleNamespace(registry_entry={"profile": {"sequence": [1, 8, 24]}})
    assert tensorrt_settings(shorter, comps, "gpu", ["fp16"], 40)["profiles"]["text"]["input_ids"][2] == [32, 24]


def test_foreign_plans_are_refused_never_deserialised():
    here = PlanKey("8.9", "10.3.0", "NVIDIA L4")
    check_plan(PlanKey("8.9", "10.3.0", "NVIDIA L40S").to_dict(), here, "p.plan")  # same arch + TRT: fine
    with pytest.raises(
        BackendError, match=r"built for sm86 / TensorRT 10.3.0 / A10, this machine is sm89.*mmdeploy build"
    ):
        check_plan(PlanKey("8.6", "10.3.0", "A10").to_dict(), here, "p.plan")
    with pytest.raises(BackendError, match="TensorRT 10.0.1"):
        check_plan(PlanKey("8.9", "10.0.1", "NVIDIA L4").to_dict(), here, "p.plan")
    with pytest.raises(BackendError, match="no plan key"):
        check_plan(None, here, "p.plan")


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    from mmdeploy.exporter.export import export

    out = tmp_path_factory.mktemp("gpu") / "clip-gpu"
    export("clip-shapes", out, precisions=["fp16", "int8"], target="gpu", calib="shapes", threads=2)
    return Bundle.open(out)


@pytest.mark.slow  # gpu_bundle: a calibrated --target gpu export (54 s of setup in the last CI)
def test_gpu_bundle_carries_build_settings(gpu_bundle):
    trt = gpu_bundle.manifest["tensorrt"]
    assert trt["target"] == "gpu" and trt["precisions"] == ["fp16", "int8"]
    assert trt["profiles"]["vision"]["pixel_values"][2][0] == 64  # clip-shapes profile: batch max 64
    seq = gpu_bundle.manifest["tokenizer"]["max_length"]  # 16 positions
    assert trt["profiles"]["text"]["input_ids"][2] == [64, seq] == trt["profiles"]["text"]["attention_mask"][2]
    assert set(trt["int8_onnx"]) == {"vision", "text"}
    # an ORT fp32 artifact is still there to run on the CPU
    assert gpu_bundle.find("vision", "onnxruntime", "fp32")


@pytest.mark.slow  # gpu_bundle: a calibrated --target gpu export (54 s of setup in the last CI)
def test_gpu_int8_qdq_is_symmetric_with_zero_points_0_and_runs_in_ort(gpu_bundle):
    for comp, entry in gpu_bundle.manifest["tensorrt"]["int8_onnx"].items():
        model = onnx.load(str(gpu_bundle.path(entry["path"])))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq, comp
        for n in qdq:
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), (comp, n.name)
        assert entry["recipe"]["activations"] == "int8 symmetric"
        assert entry["parity"]["cosine_mean"] >= 0.99 and entry["gate"]["passed"]


def test_cpu_bundle_cannot_get_tensorrt_int8(clip_bundle):
    from mmdeploy.errors import InputError
    from mmdeploy.exporter.quantize import QuantConfig, quantize

    with pytest.raises(InputError, match="exported for cpu"):
        quantize(clip_bundle, QuantConfig(precision="int8", backend="tensorrt", calib="shapes"))


@pytest.mark.slow  # gpu_bundle: a calibrated --target gpu export (54 s of setup in the last CI)
@pytest.mark.lacks("tensorrt")
def test_build_without_tensorrt_is_one_clear_line(gpu_bundle):
    r = CliRunner().invoke(app, ["build", str(gpu_bundle.root), "--backend", "tensorrt"])
    assert r.exit_code == 2
    assert "pip install 'mmdeploy[tensorrt]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tensorrt_backend_on_cpu_target_is_refused(tmp_path):
    r = CliRunner().invoke(app, ["export", "clip-shapes", "-o", str(tmp_path / "o"), "--backend", "tensorrt"])
    assert r.exit_code == 2 and "--target gpu" in r.stderr


@pytest.mark.lacks("cuda")
def test_onnxruntime_cuda_without_onnxruntime_gpu(clip_bundle):
    from mmdeploy.runtimes import load

    with pytest.raises(BackendError, match="pip install onnxruntime-gpu"):
        load(clip_bundle, backend="onnxruntime", precision="fp32", device="cuda")


def test_doctor_reports_tensorrt():
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 0 and "tensorrt:" in r.stdout and "gpu:" in r.stdout


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_engines_match_onnx(gpu_bundle):  # pragma: no cover - runs on GPU machines
    from mmdeploy.runtimes.build import build

    b = build(gpu_bundle.root, "tensorrt")
    for a in b.find(backend="tensorrt"):
        assert a.gate["passed"], (a.component, a.precision, a.parity)


def test_build_jobs_come_from_the_bundles_tensorrt_block(tmp_path):
    """`mmdeploy build` asks the backend what to build: TensorRT reads the bundle's profiles,
    precisions and int8 Q/DQ files (no GPU needed for that); OpenVINO builds fp32 from each ONNX."""
    from mmdeploy.errors import InputError
    from mmdeploy.runtimes.backends import get_backend

    profile = {"pixel_values": [[1, 3, 64, 64], [8, 3, 64, 64], [64, 3, 64, 64]]}
    trt = {
        "target": "gpu",
        "precisions": ["fp16", "int8"],
        "profiles": {"vision": profile, "text": {"input_ids": [[1, 1], [8, 16], [64, 16]]}},
        "int8_onnx": {"vision": {"path": "tensorrt/vision.qdq.onnx"}, "text": {"path": "tensorrt/text.qdq.onnx"}},
    }
    components = {"vision": {"onnx": "onnx/vision.onnx"}, "text": {"onnx": "onnx/text.onnx"}}
    gpu = Bundle(tmp_path, {"components": components, "tensorrt": trt})
    jobs = get_backend("tensorrt").build_jobs(gpu, dla_core=1)
    assert [(j.component, j.precision, j.source) for j in jobs] == [
        ("vision", "fp16", "onnx/vision.onnx"),
        ("vision", "int8", "tensorrt/vision.qdq.onnx"),
        ("text", "fp16", "onnx/text.onnx"),
        ("text", "int8", "tensorrt/text.qdq.onnx"),
    ]
    assert all(j.settings["target"] == "gpu" and j.settings["dla_core"] == 1 for j in jobs)
    assert jobs[0].settings["shapes"] == {"pixel_values": ((1, 3, 64, 64), (8, 3, 64, 64), (64, 3, 64, 64))}
    assert [j.precision for j in get_backend("tensorrt").build_jobs(gpu, ["fp16"])] == ["fp16", "fp16"]
    no_qdq = Bundle(tmp_path, {"components": components, "tensorrt": {**trt, "int8_onnx": {}}})
    with pytest.raises(InputError, match="no int8 Q/DQ ONNX for vision"):
        get_backend("tensorrt").build_jobs(no_qdq)
    cpu = Bundle(tmp_path, {"components": components})
    with pytest.raises(InputError, match="no TensorRT build settings"):
        get_backend("tensorrt").build_jobs(cpu)
    assert [(j.component, j.precision, j.source) for j in get_backend("openvino").build_jobs(cpu)] == [
        ("vision", "fp32", "onnx/vision.onnx"),
        ("text", "fp32", "onnx/text.onnx"),
    ]
