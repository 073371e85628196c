"""Contract every backend meets: parity with PyTorch, dynamic batch, texts of any length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdeploy.benchmarks.datasets import shapes
from mmdeploy.runtimes import load
from mmdeploy.runtimes.bundle import Bundle

from .conftest import VARIANTS

GATE = {"fp32": 0.9999, "bf16": 0.99}
TEXTS = [
    "a",
    "a photo of a red circle",
    "a small blue star on a yellow background",
    " ".join(["a large green hexagon on a purple background"] * 12),  # longer than the context
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: "/".join(v))
def pipeline(request, clip_bundle):
    backend, precision = request.param
    if not Bundle.open(clip_bundle).find(backend=backend, precision=precision):
        pytest.skip(f"{backend}/{precision} not built on this CPU")
    return load(clip_bundle, backend=backend, precision=precision, threads=2)


@pytest.mark.parametrize("batch", [1, 5])
def test_images_match_pytorch(pipeline, clip_reference, batch):
    images = [s.image for s in shapes.generate("test", 8)[:batch]]
    pixel_values = pipeline.preprocess(images)
    with torch.no_grad():
        ref = clip_reference.get_image_features(pixel_values=torch.from_numpy(pixel_values))
    ref = getattr(ref, "pooler_output", ref).numpy()
    out = pipeline.embed_images(images, normalize=False)
    assert out.shape == (batch, ref.shape[1])
    assert _cos(out, ref).min() >= GATE[pipeline.precision]


def test_texts_of_different_lengths_match_pytorch(pipeline, clip_reference):
    feeds = pipeline.text_inputs(TEXTS)
    assert feeds["input_ids"].shape[1] == pipeline.tokenizer.max_length  # the long one was truncated
    with torch.no_grad():
        ref = clip_reference.get_text_features(
            input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"])
        )
    ref = getattr(ref, "pooler_output", ref).numpy()
    out = pipeline.embed_texts(TEXTS, normalize=False)
    assert _cos(out, ref).min() >= GATE[pipeline.precision]
    # a text alone gives the same embedding as in a padded batch
    alone = pipeline.embed_texts([TEXTS[0]])
    np.testing.assert_allclose(alone[0], pipeline.embed_texts(TEXTS)[0], atol=2e-2 if pipeline.precision == "bf16" else 1e-5)


def test_zero_shot_classify_is_right_on_the_fixture(pipeline):
    samples = shapes.generate("test", 40)
    labels = shapes.labels()
    results = pipeline.classify_batch([s.image for s in samples], labels, template="a photo of a {}")
    correct = sum(r[0][0] == shapes.label_of(s) for r, s in zip(results, samples))
    assert correct / len(samples) >= 0.9
    probs = [p for _, p in results[0]]
    assert abs(sum(probs) - 1) < 1e-4 and probs == sorted(probs, reverse=True)
