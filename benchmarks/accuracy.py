"""Task accuracy beside speed: zero-shot top-1 for CLIP bundles on a labelled data set, and for
text embeddings the ranking of graded sentence-pair similarities (Spearman)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..common.datasets import DataSet
from ..runtimes.backends import get_backend
from ..runtimes.feeds import BundleFeeds
from ..runtimes.pipelines import pipeline_class
from ..runtimes.select import open_session
from .plan import BenchConfig

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


def task_accuracy(
    bundle, arts, inputs: BundleFeeds, data: DataSet, ref, threads, log, teacher=None
) -> list[dict[str, Any]]:
    """Zero-shot top-1 per (backend, precision) that has both towers of a dual encoder, for PyTorch, and for the teacher."""
    if pipeline_class(bundle.family).task != "zero-shot" or not data.class_names:
        return []
    img_out, txt_out = (bundle.components[c]["outputs"][0]["name"] for c in ("vision", "text"))
    out = []
    for name, r in (("teacher", teacher), ("pytorch", ref)):
        if r is None:
            continue
        from ..exporter.reference import TorchSession

        v = TorchSession(r.module("vision"), r.input_names("vision"), [img_out], threads)
        t = TorchSession(r.module("text"), r.input_names("text"), [txt_out], threads)
        acc = zero_shot_top1(lambda f: v.run(f)[img_out], lambda f: t.run(f)[txt_out], inputs, data)
        out.append({"backend": name, "precision": "fp32", **acc})
    for backend, precision in sorted({(a.backend, a.precision) for a in arts}):
        pair = {a.component: a for a in bundle.find(backend=backend, precision=precision)}
        if set(pair) != {"vision", "text"} or get_backend(backend).available() is not None:
            continue
        v = open_session(bundle, pair["vision"], threads)
        t = open_session(bundle, pair["text"], threads)
        acc = zero_shot_top1(lambda f: v.run(f)[img_out], lambda f: t.run(f)[txt_out], inputs, data)
        out.append({"backend": backend, "precision": precision, **acc})
    for a in out:
        log(f"{a['task']} {a['backend']}/{a['precision']}: {a['value']:.2%} of {a['n']}")
    return out


def pair_accuracy(bundle, arts, inputs: BundleFeeds, ref, threads, log) -> list[dict[str, Any]]:
    """Text embeddings: how each variant ranks the graded sentence pairs, vs PyTorch (and the grades)."""
    out, ref_cos = [], None
    if ref is not None:
        from ..exporter.reference import TorchSession

        t = TorchSession(ref.module("text"), ref.input_names("text"), ["text_embeds"], threads)
        ref_cos = pair_cosines(lambda f: t.run(f)["text_embeds"], inputs)
        out.append({"backend": "pytorch", "precision": "fp32", **pair_ranking(ref_cos, None)})
    for a in arts:
        if a.component != "text" or get_backend(a.backend).available() is not None:
            continue
        sess = open_session(bundle, a, threads)
        cos = pair_cosines(lambda f: sess.run(f)["text_embeds"], inputs)
        out.append({"backend": a.backend, "precision": a.precision, **pair_ranking(cos, ref_cos)})
    for r in out:
        log(f"{r['task']} {r['backend']}/{r['precision']}: {r['value']:.4f} (vs grades {r['vs_grades']:.4f})")
    return out


def corpus_bleu(hyps: list[str], refs: list[str], n: int = 4) -> float:
    """Corpus BLEU-n (uniform weights, brevity penalty, whitespace tokens, one reference each)."""
    import math
    from collections import Counter

    match, total = [0] * n, [0] * n
    hl = rl = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        hl, rl = hl + len(h), rl + len(r)
        for k in range(1, n + 1):
            hc = Counter(tuple(h[i : i + k]) for i in range(len(h) - k + 1))
            rc = Counter(tuple(r[i : i + k]) for i in range(len(r) - k + 1))
            match[k - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[k - 1] += max(len(h) - k + 1, 0)
    if min(match) == 0 or hl == 0:
        return 0.0
    logp = sum(math.log(m / t) for m, t in zip(match, total)) / n
    bp = 1.0 if hl > rl else math.exp(1 - rl / hl)
    return bp * math.exp(logp)


def caption_accuracy(pipes, ref, data: DataSet, cfg: BenchConfig, log, limit: int = 200) -> list[dict[str, Any]]:
    """Exact match and corpus BLEU-4 of the captions vs the data set's reference captions."""
    images, refs = data.images[:limit], (data.captions or [])[:limit]
    out = []
    todo: list[tuple[str, str, Any]] = []
    if ref is not None:
        todo.append(("pytorch", "fp32", None))
    todo += [(b, p, pipe) for (b, p), pipe in pipes.items()]
    base = next(iter(pipes.values()))
    for backend, precision, pipe in todo:
        caps: list[str] = []
        for i in range(0, len(images), 50):
            px = base.pixel_values(images[i : i + 50])
            if pipe is None:
                ids = ref.torch_generate(px, max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams)
            else:
                ids = pipe.generate_ids(px, max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams)
            caps += [base.decode(x) for x in ids]
        exact = float(np.mean([c == r for c, r in zip(caps, refs)]))
        bleu = corpus_bleu(caps, refs)
        for task, value in (("caption exact match", exact), ("caption BLEU-4", bleu)):
            out.append({"backend": backend, "precision": precision, "task": task, "n": len(refs), "value": value})
        log(f"captions {backend}/{precision}: exact match {exact:.2%}, BLEU-4 {bleu:.3f} on {len(refs)}")
    return out


def vqa_accuracy(pipes, ref, data: DataSet, cfg: BenchConfig, log, limit: int = 600) -> list[dict[str, Any]]:
    """Exact answers (greedy or beam, as benched) vs the data set's reference answers."""
    qa = (data.qa or [])[:limit]
    out = []
    base = next(iter(pipes.values()))
    todo: list[tuple[str, str, Any]] = [("pytorch", "fp32", None)] if ref is not None else []
    todo += [(b, p, pipe) for (b, p), pipe in pipes.items()]
    images = [im for im, _, _ in qa]
    ids = [base.question_ids(q) for _, q, _ in qa]
    for backend, precision, pipe in todo:
        answers: list[str] = []
        for i in range(0, len(qa), 60):
            if pipe is None:
                px = base.pixel_values(images[i : i + 60])
                got = ref.torch_generate(
                    px, ids[i : i + 60], max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams
                )
            else:
                got = pipe.answer_ids(
                    images[i : i + 60],
                    [q for _, q, _ in qa[i : i + 60]],
                    max_new_tokens=cfg.max_new_tokens,
                    num_beams=cfg.num_beams,
                    batch_size=60,
                )
            answers += [base.decode(x) for x in got]
        exact = float(np.mean([a == r for a, (_, _, r) in zip(answers, qa)]))
        out.append(
            {"backend": backend, "precision": precision, "task": "vqa exact answer", "n": len(qa), "value": exact}
        )
        log(f"answers {backend}/{precision}: exact {exact:.2%} on {len(qa)} questions")
    return out
