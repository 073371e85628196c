"""Task accuracy beside speed: zero-shot top-1 for CLIP bundles on a labelled data set."""

from __future__ import annotations

from typing import Callable

import numpy as np

Run = Callable[[dict[str, np.ndarray]], np.ndarray]


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zero_shot_top1(run_vision: Run, run_text: Run, inputs, data, batch: int = 32) -> dict:
    """Share of images whose most similar class prompt is their own label."""
    prompts = [data.template.format(c) for c in data.class_names]
    text = _normalize(np.concatenate([run_text(inputs.texts(prompts[i : i + 64])) for i in range(0, len(prompts), 64)]))
    index = {c: i for i, c in enumerate(data.class_names)}
    correct = 0
    for i in range(0, len(data.images), batch):
        emb = _normalize(run_vision(inputs.images(data.images[i : i + batch])))
        pred = (emb @ text.T).argmax(-1)
        correct += int(sum(p == index[l] for p, l in zip(pred, data.labels[i : i + batch])))
    return {"task": "zero-shot top-1", "value": correct / len(data.images), "n": len(data.images), "classes": len(prompts)}
