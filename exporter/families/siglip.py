"""SigLIP family (transformers `SiglipModel`; SigLIP 2's fixed-resolution checkpoints such as
google/siglip2-base-patch16-224 are SiglipModel too): a dual encoder scored with a sigmoid.

Differences from CLIP, each measured against the HF model:
- no projections: image_embeds / text_embeds are the towers' pooled outputs (attention-pool
  head; the text head reads the LAST position);
- text is padded to max_length and takes no attention_mask (trained so: with the mask the
  text embedding drops to cosine 0.84 of the unmasked one), so the text graph has a fixed length;
- scores are sigmoid(exp(logit_scale) * cos + logit_bias), per label, not a softmax.
SigLIP 2 NaFlex (`Siglip2Model`: patch sequences with per-image grids) is refused by name.
"""

from __future__ import annotations

import math
from typing import Any

from ...common.capabilities import Capability
from ...errors import UnsupportedModelError, require
from ..checkpoint import Checkpoint
from ..prune import SiglipPruner
from . import register
from .clip import ClipFamily

torch = require("torch", "export")


class SiglipVisionTower(torch.nn.Module):
    """pixel_values -> image_embeds = get_image_features(...).pooler_output (fixed resolution)."""

    def __init__(self, model):
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values):
        return self.vision_model(pixel_values=pixel_values).pooler_output


class SiglipTextTower(torch.nn.Module):
    """input_ids (B, max_length) -> text_embeds = get_text_features(input_ids).pooler_output."""

    def __init__(self, model):
        super().__init__()
        self.text_model = model.text_model

    def forward(self, input_ids):
        return self.text_model(input_ids=input_ids).pooler_output


NAFLEX = (
    "Siglip2Model: SigLIP 2 NaFlex (variable patch grids) is not supported yet; "
    "export a fixed-resolution SigLIP 2 checkpoint (SiglipModel, e.g. google/siglip2-base-patch16-224)"
)


@register
class SiglipFamily(ClipFamily):
    family = "siglip"
    architectures = {"SiglipModel": ("SiglipModel", "SiglipConfig"), "Siglip2Model": ("Siglip2Model", "Siglip2Config")}
    model_types = ("siglip",)
    default_classes = ("SiglipModel", "SiglipConfig")
    capabilities = ClipFamily.capabilities - {Capability.DISTILL}
    distiller = None
    pruner = SiglipPruner  # --mlp only (its embedding is the hidden state)
    tokenizer_class = "SiglipTokenizer / GemmaTokenizerFast"
    padding = "max_length"
    text_inputs = ("input_ids",)
    towers = {"vision": SiglipVisionTower, "text": SiglipTextTower}

    @classmethod
    def create(cls, ckpt: Checkpoint):
        if type(ckpt.model).__name__ == "Siglip2Model":
            raise UnsupportedModelError(f"{ckpt.source.get('path', ckpt.name)}: {NAFLEX}")
        return cls(ckpt)

    def embedding_dim(self, cfg) -> int:
        return int(cfg.vision_config.hidden_size)

    def scoring(self) -> dict[str, Any]:
        scale = float(self.model.logit_scale.detach().exp())
        return {
            "siglip": {
                "logit_scale": scale if math.isfinite(scale) else 10.0,
                "logit_bias": float(self.model.logit_bias.detach().reshape(-1)[0]),
                "embed_dim": self.embed_dim,
            }
        }
