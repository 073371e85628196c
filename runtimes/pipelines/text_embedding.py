"""Text-embedding pipeline (sentence-transformers style encoder) on any backend: embed_texts.

The graph does the pooling (and the L2 normalisation when the checkpoint has it), so this
file only tokenizes, batches and runs. No torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...common.capabilities import Capability
from ...errors import InputError
from ..bundle import Bundle
from ..feeds import text_tokenizer
from ..scoring import l2_normalize
from . import register
from .base import EncoderPipeline


@register
class TextEmbeddingPipeline(EncoderPipeline):
    """One text-embedding bundle on one (backend, precision)."""

    family = "text-embedding"
    task = "pair-similarity"
    capabilities = frozenset({Capability.EMBED_TEXTS})

    def __init__(
        self, bundle: Bundle, backend: str, precision: str, threads: int | None = None, device: str | None = None
    ):
        from ..select import open_session

        self.bundle, self.backend, self.precision = bundle, backend, precision
        m = bundle.manifest
        bundle.verify([m["tokenizer"]["file"]])
        self.tokenizer = text_tokenizer(bundle)
        info = m.get("text_embedding", {})
        self.pooling = info.get("pooling", "mean")
        self.normalized = bool(info.get("normalized", False))
        self.embed_dim = info.get("embed_dim")
        self.session = open_session(bundle, bundle.find("text", backend, precision)[0], threads, device)
        self.sessions = {"text": self.session}

    @property
    def variant(self) -> str:
        return f"{self.backend}/{self.precision}"

    def text_inputs(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts))

    def run_text(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(feeds)["text_embeds"]

    def embed_texts(self, texts: Sequence[str] | str, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Texts -> (N, D) float32 embeddings, in the order given.

        Texts are batched by length (longest first, as sentence-transformers does) so that a
        batch pads little; padding does not change an embedding. ``normalize`` L2-normalises
        the output; with ``False`` you get what the graph returns (already unit length when
        the checkpoint ends in a Normalize module, see ``self.normalized``).
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)):
            raise InputError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
        if len(texts) == 0:
            raise InputError("no texts given")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}] is {type(t).__name__}, expected a string")
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = [
            self.run_text(self.text_inputs([texts[j] for j in order[i : i + batch_size]]))
            for i in range(0, len(texts), batch_size)
        ]
        stacked = np.concatenate(out).astype(np.float32, copy=False)
        emb = np.empty_like(stacked)
        emb[order] = stacked
        return l2_normalize(emb) if normalize else emb
