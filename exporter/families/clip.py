"""CLIP family: the vision and text towers as separate graphs with dynamic batch / sequence."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import CheckpointError, require
from ...runtimes.preprocess import ImagePreprocessor
from ...runtimes.tokenize import TextTokenizer
from ..checkpoint import Checkpoint, tokenizer_files, tokenizer_json
from ..distill import ClipDistiller
from ..prune import ClipPruner
from . import register
from .base import Family

torch = require("torch", "export")


class VisionTower(torch.nn.Module):
    """pixel_values -> image_embeds (projected, not normalised), as get_image_features."""

    def __init__(self, model):
        super().__init__()
        self.vision_model, self.visual_projection = model.vision_model, model.visual_projection

    def forward(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class TextTower(torch.nn.Module):
    """input_ids, attention_mask -> text_embeds (projected, not normalised), as get_text_features."""

    def __init__(self, model):
        super().__init__()
        self.text_model, self.text_projection = model.text_model, model.text_projection

    def forward(self, input_ids, attention_mask):
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.text_projection(out.pooler_output)


@register
class ClipFamily(Family):
    family = "clip"
    architectures = {"CLIPModel": ("CLIPModel", "CLIPConfig")}
    model_types = ("clip",)
    default_classes = ("CLIPModel", "CLIPConfig")
    capabilities = frozenset(
        {Capability.EMBED_IMAGES, Capability.EMBED_TEXTS, Capability.CLASSIFY, Capability.DISTILL, Capability.PRUNE}
    )
    distiller = ClipDistiller
    pruner = ClipPruner
    components = ("vision", "text")
    outputs = {"vision": "image_embeds", "text": "text_embeds"}

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.model = ckpt.model
        cfg = self.model.config
        self.image_size = int(cfg.vision_config.image_size)
        self.max_length = int(cfg.text_config.max_position_embeddings)
        self.embed_dim = self.embedding_dim(cfg)
        if not ckpt.preprocessor:
            raise CheckpointError(
                f"{ckpt.source.get('path', ckpt.name)} has no preprocessor_config.json: save the "
                "image processor with the checkpoint"
            )
        self.preprocess = ImagePreprocessor.from_config(ckpt.preprocessor)
        tok = self.tokenizer_file = tokenizer_json(ckpt, self.tokenizer_class)
        self.tokenizer = TextTokenizer.from_file(tok, max_length=self.max_length, padding=self.padding)

    # -- what a dual-encoder family changes (SigLIP, ALIGN subclass these) -----------------
    tokenizer_class = "CLIPTokenizerFast"
    padding = "longest"  # text padding policy the runtime applies (manifest tokenizer.padding)
    text_inputs = ("input_ids", "attention_mask")
    towers = {"vision": VisionTower, "text": TextTower}

    def embedding_dim(self, cfg) -> int:
        return int(cfg.projection_dim)

    def scoring(self) -> dict[str, Any]:
        """The manifest block the runtime pipeline's `scores` reads (classification rule)."""
        scale = float(self.model.logit_scale.detach().exp())
        return {"clip": {"logit_scale": scale if math.isfinite(scale) else 100.0, "embed_dim": self.embed_dim}}

    # -- components ---------------------------------------------------------------------
    def module(self, component: str):
        return self.towers[component](self.model).eval()

    def input_names(self, component: str) -> list[str]:
        return ["pixel_values"] if component == "vision" else list(self.text_inputs)

    def _sequence_axis(self) -> str | None:
        # max_length padding: the text graph takes exactly max_length tokens
        return None if self.padding == "max_length" else "sequence"

    def dynamic_axes(self, component: str) -> dict[str, dict[int, str]]:
        if component == "vision":
            return {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}
        seq = self._sequence_axis()
        axes = {n: ({0: "batch", 1: seq} if seq else {0: "batch"}) for n in self.text_inputs}
        return {**axes, "text_embeds": {0: "batch"}}

    def specs(self, component: str) -> dict[str, list[dict[str, Any]]]:
        s = self.image_size
        if component == "vision":
            ins = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, s, s]}]
        else:
            seq = self._sequence_axis() or self.max_length
            ins = [{"name": n, "dtype": "int64", "shape": ["batch", seq]} for n in self.text_inputs]
        out = [{"name": self.outputs[component], "dtype": "float32", "shape": ["batch", self.embed_dim]}]
        return {"inputs": ins, "outputs": out}

    def export_feeds(self, component: str) -> dict[str, np.ndarray]:
        """Example inputs for tracing: batch 2, and a text with padding so masks are traced."""
        if component == "vision":
            return self.feeds("vision", 2)
        return self._text_feeds(["a photo of a cat", "a"])

    def _text_feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        feeds = self.tokenizer(texts)
        return {n: feeds[n] for n in self.text_inputs}

    def feeds(self, component: str, batch: int, data=None) -> dict[str, np.ndarray]:
        """Real inputs for parity / bench: photos and captions (or a data set's)."""
        from ...common.datasets.photos import caption_batch, photo_batch

        if component == "vision":
            imgs = data.image_batch(batch) if data is not None else photo_batch(batch)
            return {"pixel_values": self.preprocess(imgs)}
        texts = data.text_batch(batch) if data is not None else caption_batch(batch)
        return self._text_feeds(texts)

    def manifest_extra(self) -> dict[str, Any]:
        return {
            "preprocess": {"file": "preprocessor_config.json", "config": self.preprocess.to_config()},
            "tokenizer": {
                "file": "tokenizer.json",
                "max_length": self.max_length,
                "pad_id": self.tokenizer.pad_id,
                "padding": self.padding,
            },
            **self.scoring(),
        }

    def bundle_files(self) -> list[tuple[Path, str]]:
        return tokenizer_files(self.tokenizer_file)
