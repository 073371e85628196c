"""Contract every backend meets: parity with PyTorch, dynamic batch, texts of any length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdeploy.common.datasets import shapes
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


@pytest.fixture(scope="module", params=VARIANTS)
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
    np.testing.assert_allclose(
        alone[0], pipeline.embed_texts(TEXTS)[0], atol=2e-2 if pipeline.precision == "bf16" else 1e-5
    )


def test_zero_shot_predictions_match_pytorch(pipeline, clip_reference):
    """Exported variants lose no accuracy: top-1 identical to PyTorch on the test split within
    one image (two for bf16), and the fixture's accuracy holds."""
    from .conftest import FIXTURE_MIN_TOP1

    samples = shapes.generate("test", 100)
    labels = shapes.labels()
    results = pipeline.classify_batch([s.image for s in samples], labels, template="a photo of a {}")
    ours = [r[0][0] for r in results]
    with torch.no_grad():
        txt = pipeline.text_inputs([f"a photo of a {l}" for l in labels])
        t = clip_reference.get_text_features(
            input_ids=torch.from_numpy(txt["input_ids"]), attention_mask=torch.from_numpy(txt["attention_mask"])
        )
        v = clip_reference.get_image_features(
            pixel_values=torch.from_numpy(pipeline.preprocess([s.image for s in samples]))
        )
    t, v = (getattr(x, "pooler_output", x).numpy() for x in (t, v))
    theirs = [
        labels[i]
        for i in (
            v / np.linalg.norm(v, axis=-1, keepdims=True) @ (t / np.linalg.norm(t, axis=-1, keepdims=True)).T
        ).argmax(-1)
    ]
    assert sum(a != b for a, b in zip(ours, theirs)) <= (2 if pipeline.precision == "bf16" else 1)
    correct = sum(p == shapes.label_of(s) for p, s in zip(ours, samples))
    assert correct / len(samples) >= FIXTURE_MIN_TOP1 - 0.05  # 100 images: allow sampling noise
    probs = [p for _, p in results[0]]
    assert abs(sum(probs) - 1) < 1e-4 and probs == sorted(probs, reverse=True)
