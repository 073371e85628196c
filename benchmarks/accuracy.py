"""Task accuracy beside speed: zero-shot top-1 for CLIP bundles on a labelled data set, and for
text embeddings the ranking of graded sentence-pair similarities (Spearman)."""

from __future__ import annotations

from collections.abc import Callable

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
    return {
        "task": "zero-shot top-1",
        "value": correct / len(data.images),
        "n": len(data.images),
        "classes": len(prompts),
    }


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties), numpy only."""

    def ranks(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        r = np.empty(len(x))
        r[np.argsort(x, kind="stable")] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):  # ties share their mean rank
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def pair_cosines(run_text: Run, inputs) -> np.ndarray:
    """Cosine of every graded sentence pair (benchmarks/datasets/sentences.PAIRS)."""
    from ..common.datasets.sentences import PAIRS, pair_sentences

    texts = pair_sentences()
    emb = _normalize(np.concatenate([run_text(inputs.texts(texts[i : i + 32])) for i in range(0, len(texts), 32)]))
    index = {t: i for i, t in enumerate(texts)}
    return np.array([float(emb[index[a]] @ emb[index[b]]) for a, b, _ in PAIRS])


def pair_ranking(cosines: np.ndarray, reference: np.ndarray | None) -> dict:
    """Spearman of pair cosines vs the PyTorch reference's (None: vs the hand grades)."""
    from ..common.datasets.sentences import PAIRS

    grades = np.array([g for *_, g in PAIRS])
    vs = reference if reference is not None else grades
    return {
        "task": "pair-similarity Spearman vs " + ("PyTorch" if reference is not None else "grades"),
        "value": spearman(cosines, vs),
        "n": len(PAIRS),
        "vs_grades": round(spearman(cosines, grades), 4),
    }
