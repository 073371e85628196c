"""Contract defaults shared by encoder-only families (dual encoders, text embeddings). How quantize
treats them (recipes, feeds, gates) is build-time policy: exporter/quantization/policies.py."""

from __future__ import annotations

from .pipeline import Pipeline


class EncoderPipeline(Pipeline):
    """Encoder-only families: quantized with calibration where the recipe needs it, gated on the
    mean cosine for INT8 (the figure targets are stated in; the min is recorded beside it)."""

    generative = False
    quantization_policy = "encoder"  # recipes, feeds and gates of quantize: exporter/quantization/policies.py
