"""The gates a variant passes besides its per-graph parity: for generative families, how far its
greedy tokens follow fp32 ONNX Runtime's on held-out photos (quantize records the share beside the
cosines; below --min-agreement the variant is kept but never chosen by default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...common.fidelity import token_agreement
from ...runtimes.bundle import Bundle
from ...runtimes.pipelines import pipeline_class


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """Greedy-token agreement with fp32: what each pipeline generates for the comparison."""

    tokens: Callable[[Any], list]  # an opened pipeline -> its greedy token ids on the held-out inputs
    inputs: str  # what they are, for the manifest

    def reference(self, bundle: Bundle, threads: int | None = None) -> list:
        """fp32 ONNX Runtime's greedy tokens on the held-out inputs (what every variant is compared to)."""
        return self.tokens(pipeline_class(bundle.family)(bundle, "onnxruntime", "fp32", threads=threads))

    def measure(
        self, bundle: Bundle, backend: str, precision: str, threads: int | None = None, reference: list | None = None
    ) -> tuple[float, str]:
        """(share of fp32's greedy tokens the variant reproduces, what the inputs were); `reference`:
        fp32's tokens already computed from this bundle's fp32 graphs (export reuses them per variant)."""
        ref = self.reference(bundle, threads) if reference is None else reference
        got = self.tokens(pipeline_class(bundle.family)(bundle, backend, precision, threads=threads))
        return token_agreement(ref, got), self.inputs


def caption_tokens(pipe) -> list:
    from ...common.datasets.photos import photo_batch

    return pipe.generate_ids(pipe.pixel_values(photo_batch(4)), max_new_tokens=16, num_beams=1)


def vqa_tokens(pipe) -> list:
    from ...common.datasets.photos import photo_batch

    qs = ["what is in the picture?", "how many animals are there?", "what color is it?", "is it day or night?"]
    return pipe.answer_ids(photo_batch(4), qs, max_new_tokens=8)


def vlm_tokens(pipe) -> list:
    from ...common.datasets.photos import photo_batch

    out = []
    for im in photo_batch(2):
        chat = pipe.chat()
        chat.send("Describe the image.", images=[im], max_new_tokens=16)
        out.append(chat.generated)
    return out


CAPTION_AGREEMENT = Agreement(tokens=caption_tokens, inputs="greedy tokens on 4 held-out photos, 16 new tokens")
VQA_AGREEMENT = Agreement(tokens=vqa_tokens, inputs="greedy answers to 4 questions about held-out photos, 8 new tokens")
VLM_AGREEMENT = Agreement(
    tokens=vlm_tokens, inputs="greedy tokens of a chat turn about 2 held-out photos, 16 new tokens"
)
