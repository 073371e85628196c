"""The trained SigLIP and ALIGN fixtures (fixtures/siglip-shapes, fixtures/align-shapes) on the path a
user takes: `export NAME --precision fp32,int8 --calib shapes` (ORT static Q/DQ and OpenVINO NNCF),
parity with the HF model, zero-shot accuracy kept by INT8, every INT8 variant within its gate and
chosen by default. Random-init towers cannot show this (their INT8 cosine says nothing about a task)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from mmdeploy.benchmarks.accuracy import zero_shot_top1  # noqa: E402
from mmdeploy.common.datasets import open_dataset  # noqa: E402
from mmdeploy.common.datasets.photos import photo_batch  # noqa: E402
from mmdeploy.exporter.registry import package_path  # noqa: E402
from mmdeploy.runtimes import Bundle, load  # noqa: E402
from mmdeploy.runtimes.feeds import BundleFeeds  # noqa: E402
from mmdeploy.runtimes.select import open_session  # noqa: E402

pytestmark = pytest.mark.slow  # each family's fixture: a calibrated fp32 + INT8 export on two backends (~93 s)

# the zero-shot top-1 each card states, less a margin for the 300-image test subset used here
MIN_TOP1 = 0.95
FAMILIES = {"siglip-shapes": "siglip", "align-shapes": "align"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    from .bundle_cache import export_cached

    out = tmp_path_factory.mktemp("trained") / request.param
    export_cached(
        request.param, out, backends=["onnxruntime", "openvino"], precisions=["fp32", "int8"], calib="shapes", threads=2
    )
    return request.param, out


def _cos(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _top1(bundle: Bundle, backend: str, precision: str, data, inputs) -> float:
    outs = {c: bundle.components[c]["outputs"][0]["name"] for c in ("vision", "text")}
    v = open_session(bundle, bundle.find("vision", backend, precision)[0], 2)
    t = open_session(bundle, bundle.find("text", backend, precision)[0], 2)
    return zero_shot_top1(lambda f: v.run(f)[outs["vision"]], lambda f: t.run(f)[outs["text"]], inputs, data)["value"]


def test_fp32_matches_the_hf_model(trained):
    from transformers import AutoModel

    name, bundle = trained
    model = AutoModel.from_pretrained(str(package_path(f"fixtures/{name}"))).eval()
    pipe = load(bundle, backend="onnxruntime", precision="fp32", threads=2)
    images = list(open_dataset("shapes", split="test", limit=8).images) + photo_batch(3)  # its world + real photos
    texts = ["a photo of a red circle", "a small blue star on a white background", "Zebra-7, on plaid!"]
    enc = pipe.text_inputs(texts)
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=torch.from_numpy(pipe.preprocess(images))).pooler_output
        ref_txt = model.get_text_features(**{k: torch.from_numpy(v) for k, v in enc.items()}).pooler_output
    assert _cos(pipe.embed_images(images, normalize=False), ref_img.numpy()).min() >= 0.9999
    assert _cos(pipe.embed_texts(texts, normalize=False), ref_txt.numpy()).min() >= 0.9999
    assert Bundle.open(bundle).family == FAMILIES[name]


def test_int8_is_within_its_gate_and_chosen(trained):
    _, bundle = trained
    b = Bundle.open(bundle)
    int8 = b.find(precision="int8")
    assert {(a.component, a.backend) for a in int8} == {
        (c, be) for c in b.components for be in ("onnxruntime", "openvino")
    }
    for a in int8:
        assert a.gate["min_cosine"] == 0.99 and a.gate["metric"] == "cosine_mean"
        assert a.passed, (a.component, a.backend, a.parity)
        assert a.recipe["calibration"]["data"] == "shapes" and "held-out" in a.parity["reference"]
    assert load(bundle, threads=2).precision == "int8"


def test_int8_keeps_zero_shot_accuracy(trained):
    """Zero-shot top-1 on 300 shapes test images: fp32 as the card says, each INT8 within 1 point."""
    _, bundle = trained
    b = Bundle.open(bundle)
    data = open_dataset("shapes", split="test", limit=300)
    inputs = BundleFeeds(b, data)
    fp32 = _top1(b, "onnxruntime", "fp32", data, inputs)
    assert fp32 >= MIN_TOP1
    for backend in ("onnxruntime", "openvino"):
        assert _top1(b, backend, "int8", data, inputs) >= fp32 - 0.01, backend
