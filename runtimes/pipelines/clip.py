"""CLIP pipeline on any backend: embed_images, embed_texts, classify (zero-shot)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import InputError
from ..bundle import Bundle
from ..feeds import image_preprocessor, text_tokenizer
from ..images import load_image
from ..manifest import DICT, SCALE, obj
from ..scoring import check_template, l2_normalize, softmax
from . import register
from .base import EncoderPipeline


@register
class ClipPipeline(EncoderPipeline):
    """Both towers of one dual-encoder bundle on one (backend, precision).

    CLIP's rule is the default; another dual encoder (SigLIP, ALIGN) subclasses this and
    changes `scores` and what it reads from its manifest block."""

    family = "clip"
    task = "zero-shot"
    capabilities = frozenset({Capability.EMBED_IMAGES, Capability.EMBED_TEXTS, Capability.CLASSIFY})
    # required in its manifest, checked when the bundle is opened (runtimes/manifest.py)
    manifest_blocks = {"preprocess": DICT, "tokenizer": DICT, "clip": obj({"logit_scale": SCALE})}

    def __init__(
        self, bundle: Bundle, backend: str, precision: str, threads: int | None = None, device: str | None = None
    ):
        from ..select import open_sessions

        self.bundle, self.backend, self.precision = bundle, backend, precision
        m = bundle.manifest
        bundle.verify([m["preprocess"]["file"], m["tokenizer"]["file"]])
        self.preprocess = image_preprocessor(bundle)
        self.tokenizer = text_tokenizer(bundle)
        self.text_input_names = [i["name"] for i in bundle.components["text"]["inputs"]]
        self.read_scoring(m)
        self.sessions = open_sessions(
            bundle, {comp: bundle.find(comp, backend, precision)[0] for comp in ("vision", "text")}, threads, device
        )

    def read_scoring(self, manifest: dict) -> None:
        self.logit_scale = float(manifest["clip"]["logit_scale"])

    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """Zero-shot probabilities (images x labels) from L2-normalised embeddings: CLIP's
        softmax over the labels of the scaled cosine."""
        return softmax(self.logit_scale * image_embeds @ text_embeds.T)

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
        feeds = self.tokenizer(list(texts))
        return {k: v for k, v in feeds.items() if k in self.text_input_names}

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
            self.embed_pixels(self.image_inputs(images[i : i + batch_size])["pixel_values"], normalize)
            for i in range(0, len(images), batch_size)
        ]
        if not out:
            raise InputError("no images given")
        return np.concatenate(out)

    def embed_pixels(self, pixel_values: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Preprocessed (N, 3, H, W) float32 pixels -> (N, D) float32 embeddings (batch jobs
        preprocess off the inference thread, then call this)."""
        emb = self.run_vision({"pixel_values": pixel_values}).astype(np.float32, copy=False)
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
        prompts = [check_template(template).format(l) for l in labels]
        text = self.embed_texts(prompts)
        img = self.embed_images(images)
        probs = self.scores(img, text)
        return [sorted(zip(labels, map(float, p)), key=lambda t: -t[1]) for p in probs]
