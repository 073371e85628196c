"""A bundle's own pre-processing as feeds: images -> pixel_values, texts -> token ids.

One place for what bench, quantize (calibration and held-out fidelity) and `build` feed a
component. A component's kind is read from its declared inputs (pixel_values: images;
input_ids: texts), so no caller names a family or a component.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..common.datasets import DataSet
from ..errors import BundleError, InputError
from .bundle import Bundle
from .preprocess import ImagePreprocessor
from .tokenize import TextTokenizer


def text_tokenizer(bundle: Bundle) -> TextTokenizer:
    """The bundle's tokenizer with its padding policy (manifest `tokenizer` block)."""
    t = bundle.manifest.get("tokenizer")
    if not isinstance(t, dict) or "file" not in t:
        raise BundleError(f"{bundle.root}: manifest has no tokenizer block")
    return TextTokenizer.from_file(
        bundle.path(t["file"]),
        max_length=t["max_length"],
        pad_id=t.get("pad_id"),
        padding=t.get("padding", "longest"),
    )


def image_preprocessor(bundle: Bundle) -> ImagePreprocessor | None:
    p = bundle.manifest.get("preprocess")
    return (
        ImagePreprocessor.from_config(p["config"], source=f"{bundle.root}: manifest preprocess.config") if p else None
    )


def component_kind(bundle: Bundle, component: str) -> str:
    """ "images" or "texts": what the component's declared inputs take."""
    names = {i["name"] for i in bundle.components[component]["inputs"]}
    if "pixel_values" in names:
        return "images"
    if "input_ids" in names:
        return "texts"
    raise InputError(
        f"{bundle.root}: component {component!r} takes {sorted(names)}, which bench and quantize cannot feed"
    )


class BundleFeeds:
    """Real inputs per component, built with the runtime's own pre-processing (cached per batch)."""

    def __init__(self, bundle: Bundle, data: DataSet | None = None):
        self.bundle, self.data = bundle, data
        kinds = {c: component_kind(bundle, c) for c in bundle.components}
        self.preprocess = image_preprocessor(bundle) if "images" in kinds.values() else None
        self.tokenizer = text_tokenizer(bundle) if "texts" in kinds.values() else None
        self.kinds = kinds
        self._inputs = {c: [i["name"] for i in bundle.components[c]["inputs"]] for c in bundle.components}
        self._text_inputs = {n for c, k in kinds.items() if k == "texts" for n in self._inputs[c]}
        self._cache: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def images(self, images: list) -> dict[str, np.ndarray]:
        return {"pixel_values": self.preprocess(images)}

    def texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token ids with only the inputs the text component declares."""
        feeds = self.tokenizer(texts)
        return {k: v for k, v in feeds.items() if k in self._text_inputs} if self._text_inputs else feeds

    def _only(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # e.g. SigLIP's text tower takes input_ids alone (padded to max_length, no mask)
        return {k: v for k, v in feeds.items() if k in self._inputs[component]}

    def of(self, component: str, items: list[Any]) -> dict[str, np.ndarray]:
        """Feeds for these images / texts."""
        raw = self.images(items) if self.kinds[component] == "images" else self.tokenizer(items)
        return self._only(component, raw)

    def feeds(self, component: str, batch: int, data: DataSet | None = None) -> dict[str, np.ndarray]:
        """A batch of the data set's items (cached: the same inputs for every variant)."""
        if data is not None and data is not self.data:  # another data set: not cached
            return self._batch(component, batch, data)
        key = (component, batch)
        if key not in self._cache:
            self._cache[key] = self._batch(component, batch, self.data)
        return self._cache[key]

    def _batch(self, component: str, batch: int, data: DataSet) -> dict[str, np.ndarray]:
        items = data.image_batch(batch) if self.kinds[component] == "images" else data.text_batch(batch)
        return self.of(component, items)

    def samples(self, component: str, data: DataSet, n: int, same_shape: bool = False) -> list[dict[str, np.ndarray]]:
        """n single-item feeds (calibration). Texts keep their natural length, except for histogram
        calibration (entropy, percentile), which needs every sample padded to one length."""
        if self.kinds[component] == "images":
            return [self.of(component, [img]) for img in data.images[:n]]
        if same_shape:
            batch = self.of(component, list(data.texts[:n]))
            return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(len(data.texts[:n]))]
        return [self.of(component, [t]) for t in data.texts[:n]]
