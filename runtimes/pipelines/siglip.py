"""SigLIP pipeline: the dual-encoder pipeline with SigLIP's rule, per-label sigmoid probabilities."""

from __future__ import annotations

import numpy as np

from ..manifest import DICT, SCALE, obj
from ..scoring import sigmoid
from . import register
from .clip import ClipPipeline


@register
class SiglipPipeline(ClipPipeline):
    family = "siglip"
    manifest_blocks = {
        "preprocess": DICT,
        "tokenizer": DICT,
        "siglip": obj({"logit_scale": SCALE, "logit_bias": SCALE}),
    }

    def read_scoring(self, manifest: dict) -> None:
        self.logit_scale = float(manifest["siglip"]["logit_scale"])
        self.logit_bias = float(manifest["siglip"]["logit_bias"])

    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """Independent per-label probabilities, as SiglipModel's sigmoid(logits_per_image)."""
        return sigmoid(self.logit_scale * image_embeds @ text_embeds.T + self.logit_bias)
