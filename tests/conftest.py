"""Session-scoped bundles of the shipped fixture, exported once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmdeploy.runtimes.openvino import cpu_supports

VARIANTS = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]
# Zero-shot top-1 the shipped clip-shapes fixture must keep on the shapes test split
# (issue 4's target; its card states the measured 98.6% on 500 test images).
FIXTURE_MIN_TOP1 = 0.95


@pytest.fixture(scope="session")
def clip_bundle(tmp_path_factory) -> Path:
    from mmdeploy.exporter.export import export

    out = tmp_path_factory.mktemp("bundles") / "clip-shapes"
    export("clip-shapes", out, backends=["onnxruntime", "openvino"], precisions=["fp32", "bf16"], threads=2)
    return out


@pytest.fixture(scope="session")
def clip_reference():
    """The PyTorch model the bundle came from, loaded by the plain HF class."""
    from transformers import CLIPModel

    from mmdeploy.exporter.registry import package_path

    return CLIPModel.from_pretrained(str(package_path("fixtures/clip-shapes"))).eval()


def bf16_native() -> bool:
    return cpu_supports("bf16")
