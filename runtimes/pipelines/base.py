"""Contract defaults shared by encoder-only families (dual encoders, text embeddings): their
quantization recipes, gate metrics and the feeds quantize measures and calibrates with."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...common.datasets import DataSet, open_dataset
from ...errors import InputError, MMDeployError
from ..bundle import Bundle
from ..feeds import BundleFeeds
from .pipeline import Pipeline

# (backend, precision) -> recipe name, or {mode: recipe name} (recipes: exporter/quantization/)
ENCODER_RECIPES: dict[tuple[str, str], Any] = {
    ("onnxruntime", "int8"): {"static": "int8-static", "dynamic": "int8-dynamic"},
    ("openvino", "int8"): {"static": "int8-nncf"},
    ("tensorrt", "int8"): {"static": "int8-qdq-symmetric"},
    ("onnxruntime", "fp16"): "fp16-onnxruntime",
    ("openvino", "fp16"): "fp16-openvino",
    ("openvino", "bf16"): "bf16-openvino",
}
HELD_OUT = {"images": 16, "texts": 32}  # held-out items per component kind


def calibration_data(spec: str | None, component: str, kind: str) -> DataSet:
    """The calibration set for one component (kind: images / texts); a folder without texts
    calibrates the text tower on the built-in real captions rather than failing."""
    if spec is None:
        raise InputError("static INT8 needs calibration data: --calib DIR|FILE|shapes (or --mode dynamic)")
    data = open_dataset(spec, split="train")
    if kind == "images" and not data.images:
        raise InputError(f"--calib {spec}: the {component} component needs images, and {spec} has only text")
    if kind == "texts" and not data.texts:
        if not data.images:
            raise InputError(f"--calib {spec} has neither images nor texts")
        from ...common.datasets.photos import CAPTIONS

        data = DataSet(name="built-in captions", texts=list(CAPTIONS))
    return data


def held_out_data(kinds) -> DataSet:
    """Inputs for the fidelity check that the calibration never saw (kinds: the components' input kinds)."""
    if "images" not in kinds:
        return open_dataset("sentences", split="test")  # calibration uses the train half
    try:  # calibration reads the train splits (photos/train, shapes/train), never these
        return open_dataset("photos", split="test")
    except MMDeployError:
        return open_dataset("shapes", split="test")


class EncoderPipeline(Pipeline):
    """Encoder-only families: quantized with calibration where the recipe needs it, gated on the
    mean cosine for INT8 (the figure targets are stated in; the min is recorded beside it)."""

    generative = False
    quantization = ENCODER_RECIPES
    gate_metrics = {"int8": "cosine_mean"}

    @classmethod
    def fidelity_feeds(
        cls, bundle: Bundle, components: list[str], threads: int | None = None
    ) -> dict[str, tuple[list[dict[str, np.ndarray]], str]]:
        """component -> (held-out feeds, what they are), every component from one BundleFeeds."""
        feeds = BundleFeeds(bundle)
        held = held_out_data(set(feeds.kinds.values()))
        out = {}
        for comp in components:
            n = HELD_OUT[feeds.kinds[comp]]
            out[comp] = [feeds.feeds(comp, n, held)], f"fp32 ONNX on {n} held-out items of {held.name}"
        return out

    @classmethod
    def calibration_feeds(
        cls, bundle: Bundle, component: str, spec: str | None, samples: int, same_shape: bool
    ) -> tuple[list[dict[str, np.ndarray]], str]:
        feeds = BundleFeeds(bundle)
        data = calibration_data(spec, component, feeds.kinds[component])
        return feeds.samples(component, data, samples, same_shape=same_shape), data.name
