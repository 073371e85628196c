"""ALIGN family (transformers `AlignModel`): EfficientNet image tower + BERT text tower, softmax
scoring with the learned temperature.

- image_embeds are the pooled EfficientNet features (no image projection). HF pools with an
  AvgPool2d whose kernel (config.hidden_dim) exceeds the feature map, a global mean only by
  accident of ceil_mode, which OpenVINO refuses: the tower takes the mean over H, W (same numbers).
- text_embeds = text_projection([CLS] hidden state), not BERT's tanh pooler; token_type_ids are
  the model's zero buffer, as BertTokenizer gives single sentences.
- BatchNorm runs in eval mode, folded by the exporter; EfficientNet's rescale offset is folded
  into the runtime's mean / std when the checkpoint's image processor is read.
"""

from __future__ import annotations

import math
from typing import Any

from ...common.capabilities import Capability
from ...errors import UnsupportedModelError, require
from ..checkpoint import Checkpoint
from . import register
from .clip import ClipFamily

torch = require("torch", "export")


class AlignVisionTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embeddings, self.encoder = model.vision_model.embeddings, model.vision_model.encoder

    def forward(self, pixel_values):
        return self.encoder(self.embeddings(pixel_values))[0].mean(dim=(2, 3))


class AlignTextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.text_model, self.text_projection = model.text_model, model.text_projection

    def forward(self, input_ids, attention_mask):
        h = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_projection(h[:, 0, :])


@register
class AlignFamily(ClipFamily):
    family = "align"
    architectures = {"AlignModel": ("AlignModel", "AlignConfig")}
    model_types = ("align",)
    default_classes = ("AlignModel", "AlignConfig")
    capabilities = ClipFamily.capabilities - {Capability.DISTILL, Capability.PRUNE}
    distiller = None
    pruner = None  # EfficientNet convolutions: no channel pruning yet
    tokenizer_class = "BertTokenizerFast"
    towers = {"vision": AlignVisionTower, "text": AlignTextTower}

    @classmethod
    def create(cls, ckpt: Checkpoint):
        if getattr(ckpt.model.config.vision_config, "pooling_type", "mean") != "mean":
            raise UnsupportedModelError(
                f"{ckpt.source.get('path', ckpt.name)}: ALIGN with max pooling is not supported yet"
            )
        return cls(ckpt)

    def __init__(self, ckpt: Checkpoint):
        super().__init__(ckpt)
        # the graph's input size is what the processor produces (align-base: resize 346, crop 289)
        p = self.preprocess
        self.image_size = int(p.crop_size["height"] if p.do_center_crop else p.size.get("height", self.image_size))

    def embedding_dim(self, cfg) -> int:
        return int(cfg.projection_dim)

    def scoring(self) -> dict[str, Any]:
        t = float(self.model.temperature.detach().reshape(-1)[0])
        return {"align": {"temperature": t if math.isfinite(t) and t > 0 else 1.0, "embed_dim": self.embed_dim}}
