"""Fidelity metrics shared by export parity checks and bench."""

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
