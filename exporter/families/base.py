"""The exporter half of a family: what it declares, and the defaults of export's optional steps
(so export.py calls every step on every family and never probes with ``hasattr``).

A helper module of this package, not a family: only a class decorated with ``@register``
becomes one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...common.capabilities import Capability

# parity inputs of a plain encoder component: batch of real photos / sentences
PARITY_BATCH = {"vision": 5, "text": 12}


class Family:
    family: ClassVar[str] = ""
    architectures: ClassVar[dict[str, tuple[str, str]]] = {}  # config.json architecture -> (model, config class)
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model_type values when no architecture is named
    default_classes: ClassVar[tuple[str, str]] = ("AutoModel", "AutoConfig")
    # what the bundle can do at run time (the same set as its pipeline's) plus build-time
    # capabilities: DISTILL exactly when `distiller` is set, PRUNE exactly when `pruner` is
    # (tests/test_families.py checks them)
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    distiller: ClassVar[type | None] = None  # exporter/distill.py's runner for this family's layout
    pruner: ClassVar[type | None] = None  # exporter/prune.py's layout + calibration pass for this family
    components: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[dict[str, str]] = {}  # component -> its (first) output name

    @classmethod
    def create(cls, ckpt) -> Family:
        """The exporter for a loaded checkpoint (a family may pick a subclass or refuse here)."""
        return cls(ckpt)

    @classmethod
    def can(cls, capability: Capability) -> bool:
        return capability in cls.capabilities

    # -- export's steps: the defaults fit a single-output encoder component -----------------
    def output_names(self, component: str) -> list[str]:
        """Every output of the graph (a decoder step: logits + present KV)."""
        return [self.outputs[component]]

    def export_component(self, component: str, module, path: Path, log: Callable[[str], None] = lambda s: None) -> None:
        """Trace ``module`` to ONNX at ``path`` (decoders override: dynamo with KV caches)."""
        from ..graph import export_onnx

        export_onnx(
            module,
            self.export_feeds(component),
            self.input_names(component),
            self.output_names(component)[:1],
            self.dynamic_axes(component),
            path,
        )

    def parity_cases(self, component: str) -> list[tuple[str, dict[str, np.ndarray]]]:
        """(label, feeds) pairs export compares PyTorch and every backend on."""
        n = PARITY_BATCH[component]
        return [(f"{n} real {'photos' if component == 'vision' else 'sentences'}", self.feeds(component, n))]

    def write_files(self, w) -> None:
        """Files the family derives into the staged bundle (e.g. a tokenizer with added specials)."""

    def check_variants(self, w, threads: int | None, log: Callable[[str], None]) -> dict[str, Any] | None:
        """End-to-end checks on the staged bundle (e.g. generated tokens); None: none to record."""
        return None
