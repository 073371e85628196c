"""CLIP pipeline on any backend: embed_images, embed_texts, classify (zero-shot)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .bundle import Bundle
from .images import load_image
from .preprocess import ImagePreprocessor
from .tokenize import TextTokenizer


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class ClipPipeline:
    """Both towers of one CLIP bundle on one (backend, precision)."""

    def __init__(self, bundle: Bundle, backend: str, precision: str, threads: int | None = None, device: str | None = None):
        from .select import open_sessions

        self.bundle, self.backend, self.precision = bundle, backend, precision
        m = bundle.manifest
        bundle.verify([m["preprocess"]["file"], m["tokenizer"]["file"]])
        self.preprocess = ImagePreprocessor.from_config(m["preprocess"]["config"], source=f"{bundle.root}: manifest preprocess.config")
        self.tokenizer = TextTokenizer.from_file(
            bundle.path(m["tokenizer"]["file"]), max_length=m["tokenizer"]["max_length"], pad_id=m["tokenizer"].get("pad_id")
        )
        self.logit_scale = float(m["clip"]["logit_scale"])
        self.sessions = open_sessions(
            bundle, {comp: bundle.find(comp, backend, precision)[0] for comp in ("vision", "text")}, threads, device
        )

    @property
    def variant(self) -> str:
        return f"{self.backend}/{self.precision}"

    # -- raw tensors -------------------------------------------------------------
    def image_inputs(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        if len(images) == 0:
            raise InputError("no images given")
        return {"pixel_values": self.preprocess([load_image(i) for i in images])}

    def text_inputs(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts))

    def run_vision(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions["vision"].run(feeds)["image_embeds"]

    def run_text(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.sessions["text"].run(feeds)["text_embeds"]

    # -- public API --------------------------------------------------------------
    def embed_images(self, images: Sequence[Any], batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Images (paths, bytes, PIL images or HxWx3 uint8 arrays) -> (N, D) float32 embeddings."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        out = [
            self.run_vision(self.image_inputs(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        if not out:
            raise InputError("no images given")
        emb = np.concatenate(out).astype(np.float32, copy=False)
        return l2_normalize(emb) if normalize else emb

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise InputError("no texts given")
        out = [self.run_text(self.text_inputs(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
        emb = np.concatenate(out).astype(np.float32, copy=False)
        return l2_normalize(emb) if normalize else emb

    def classify(self, image: Any, labels: Sequence[str], template: str = "{}") -> list[tuple[str, float]]:
        """Zero-shot: probabilities over `labels` (prompted with `template`), best first."""
        return self.classify_batch([image], labels, template)[0]

    def classify_batch(
        self, images: Sequence[Any], labels: Sequence[str], template: str = "{}"
    ) -> list[list[tuple[str, float]]]:
        labels = [l.strip() for l in labels if l and l.strip()]
        if len(labels) < 2:
            raise InputError("give at least two labels to choose between")
        if "{}" not in template:
            raise InputError(f"template {template!r} must contain '{{}}' where the label goes")
        text = self.embed_texts([template.format(l) for l in labels])
        img = self.embed_images(images)
        probs = softmax(self.logit_scale * img @ text.T)
        return [sorted(zip(labels, map(float, p)), key=lambda t: -t[1]) for p in probs]
