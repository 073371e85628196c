"""Fidelity: the metrics and gates that export parity, quantize, build and bench share."""

from __future__ import annotations

import numpy as np


def compare(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Row-wise cosine (min and mean over the batch) and max abs diff of two (N, D) arrays."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    out = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs output {out.shape}")
    num = (ref * out).sum(-1)
    den = np.linalg.norm(ref, axis=-1) * np.linalg.norm(out, axis=-1)
    cos = num / np.maximum(den, 1e-30)
    return {
        "cosine": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs_diff": float(np.abs(ref - out).max()),
    }


# Min cosine vs the reference for a variant to be eligible as a default (export vs PyTorch,
# quantize / build vs the fp32 graph). int4 is weight-only on captioners' decoders.
GATES = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.99, "int8": 0.99, "int4": 0.98}


def compare_all(refs: list[dict], outs: list[dict], names: list[str]) -> dict:
    """compare() over every (case, output): the worst cosine and the largest difference.

    One case and one output gives exactly compare()'s numbers."""
    worst, mean, diff, where = None, [], 0.0, None
    for ref, out in zip(refs, outs):
        for n in names:
            c = compare(ref[n], out[n])
            mean.append(c["cosine_mean"])
            diff = max(diff, c["max_abs_diff"])
            if worst is None or c["cosine"] < worst:
                worst, where = c["cosine"], n
    res = {"cosine": worst, "cosine_mean": float(sum(mean) / len(mean)), "max_abs_diff": diff}
    if len(names) > 1:
        res["worst_output"] = where
    return res


def gate(parity: dict, threshold: float, metric: str = "cosine") -> dict:
    """The gate record an artifact carries: {min_cosine, metric, passed}."""
    return {"min_cosine": threshold, "metric": metric, "passed": bool(parity[metric] >= threshold)}


def token_agreement(reference: list, output: list) -> float:
    """Greedy generations vs a reference, per row: the share of the reference's tokens matched
    before the first difference (1.0 = identical), averaged over rows."""
    shares = []
    for ref, out in zip(reference, output):
        ref, out = [int(t) for t in ref], [int(t) for t in out]
        n = 0
        while n < min(len(ref), len(out)) and ref[n] == out[n]:
            n += 1
        shares.append(1.0 if ref == out else n / max(len(ref), 1))
    return float(np.mean(shares)) if shares else 1.0
