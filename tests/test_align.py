"""ALIGN family end to end on a tiny checkpoint saved by AlignProcessor (transformers 5 layout):
EfficientNet preprocessing with the rescale offset as HF computes it, embeddings vs AlignModel on
ORT and OpenVINO, softmax(cos / temperature) classification."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from mmdeploy.common.datasets.photos import photo_batch  # noqa: E402
from mmdeploy.runtimes import Bundle, load  # noqa: E402

from .tiny_families import save_align  # noqa: E402

TEXTS = ["a photo of a cat", "an astronaut", "a cup of coffee on a table"]


@pytest.fixture(scope="module")
def align(tmp_path_factory):
    from .bundle_cache import export_cached

    root = tmp_path_factory.mktemp("align")
    model = save_align(root / "ckpt")
    assert (root / "ckpt" / "processor_config.json").is_file()
    assert not (root / "ckpt" / "preprocessor_config.json").exists()
    export_cached(str(root / "ckpt"), root / "bundle", backends=["onnxruntime", "openvino"], threads=2)
    return model, root


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_preprocessing_is_the_efficientnet_processor(align):
    from transformers import AutoImageProcessor

    _, root = align
    pipe = load(root / "bundle", backend="onnxruntime", precision="fp32")
    imgs = photo_batch(3)
    ref = AutoImageProcessor.from_pretrained(str(root / "ckpt"))(images=imgs, return_tensors="np")["pixel_values"]
    got = pipe.preprocess(imgs)
    assert got.shape == ref.shape == (3, 3, 32, 32)
    assert float(ref.min()) >= -1.0 and float(ref.max()) <= 1.0
    assert np.abs(got - ref).max() <= 1e-5  # measured 0.0: the offset folded into mean / std is exact here


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_embeddings_match_align_model(align, backend):
    model, root = align
    pipe = load(root / "bundle", backend=backend, precision="fp32", threads=2)
    images = photo_batch(4) + [np.full((30, 70), 90, np.uint8)]
    px = torch.from_numpy(pipe.preprocess(images))
    t = pipe.text_inputs(TEXTS)
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=px).pooler_output.numpy()
        ref_txt = model.get_text_features(
            input_ids=torch.from_numpy(t["input_ids"]), attention_mask=torch.from_numpy(t["attention_mask"])
        ).pooler_output.numpy()
    assert _cos(pipe.embed_images(images, normalize=False), ref_img).min() >= 0.9999
    assert _cos(pipe.embed_texts(TEXTS, normalize=False), ref_txt).min() >= 0.9999


def test_classify_is_align_softmax_with_temperature(align):
    model, root = align
    pipe = load(root / "bundle", backend="onnxruntime", precision="fp32", threads=2)
    assert Bundle.open(root / "bundle").manifest["align"]["temperature"] == pytest.approx(0.7)
    images = photo_batch(2)
    got = pipe.classify_batch(images, TEXTS)
    px = torch.from_numpy(pipe.preprocess(images))
    t = pipe.text_inputs(TEXTS)
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(t["input_ids"]),
            attention_mask=torch.from_numpy(t["attention_mask"]),
            pixel_values=px,
        ).logits_per_image
    ref = torch.softmax(logits, -1).numpy()
    for row, want in zip(got, ref):
        d = dict(row)
        assert max(abs(d[l] - float(p)) for l, p in zip(TEXTS, want)) <= 1e-4
