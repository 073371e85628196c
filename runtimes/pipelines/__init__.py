"""Runtime side of the family contract: one pipeline file per family, registered by name.

A pipeline class declares what the rest of the runtime, bench, quantize and serve ask of a
family, so none of them tests a family's name:

    family       the manifest's family name this pipeline runs
    task         the accuracy task bench runs with a labelled data set:
                 "zero-shot" (dual encoders), "pair-similarity" (text embeddings), "caption",
                 "question-answering" (VQA: exact answers on a data set's questions)
    generative   True for encoder + decoder-step bundles (bench times whole generations)
    capabilities the Capability values it serves (common/capabilities.py); the base class
                 (pipeline.py: Pipeline) raises CapabilityError for the others
    scores(image_embeds, text_embeds) -> probabilities (dual encoders: the classify rule,
                 softmax with a scale or sigmoid with scale and bias)

Pipelines are found by importing every module of this package once; a new family is a new
file here (plus its exporter file and a models.yaml row).
"""

from __future__ import annotations

from ...common.capabilities import Capability
from ...common.registry import Registry
from ...errors import BundleError

_REGISTRY = Registry(__name__, __path__)
register = _REGISTRY.register  # class decorator: `cls.family` bundles open with this pipeline
pipelines = _REGISTRY.all


def pipeline_class(family: str, where: str = "bundle") -> type:
    got = pipelines()
    if family not in got:
        raise BundleError(
            f"{where}: family {family!r} has no pipeline in this mmdeploy (has: {', '.join(sorted(got))})"
        )
    return got[family]


def families_that(capability: Capability) -> list[str]:
    """The families whose pipeline declares ``capability``, sorted (for messages and checks)."""
    return sorted(name for name, cls in pipelines().items() if capability in cls.capabilities)
