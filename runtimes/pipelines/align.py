"""ALIGN pipeline: the dual-encoder pipeline with ALIGN's rule, softmax(cos / temperature)."""

from __future__ import annotations

import numpy as np

from ..manifest import DICT, bounded, obj
from ..scoring import softmax
from . import register
from .clip import ClipPipeline


@register
class AlignPipeline(ClipPipeline):
    family = "align"
    manifest_blocks = {"preprocess": DICT, "tokenizer": DICT, "align": obj({"temperature": bounded(1e-6, 1e4)})}

    def read_scoring(self, manifest: dict) -> None:
        self.temperature = float(manifest["align"]["temperature"])

    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """As AlignModel: logits_per_image = cos / temperature, softmax over the labels."""
        return softmax(image_embeds @ text_embeds.T / self.temperature)
