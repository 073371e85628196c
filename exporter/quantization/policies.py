"""Per family, how quantize treats its bundles: which recipe builds each (backend, precision), the
parity figure each precision's gate reads, the calibration and fidelity feeds, and for generative
families the greedy-agreement gate.

A runtime pipeline names its policy (``quantization_policy``: a string, the device needs nothing
more); the policy itself lives here, build side, so a family that subclasses an encoder or a
captioner pipeline gets that policy with no row to add."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import InputError
from ...runtimes.pipelines import pipeline_class, pipelines
from . import feeds, gates
from .config import Backend, Mode, Precision
from .recipe import Feeds

# (backend, precision) -> a recipe name, or one per --mode
RecipeTable = dict[tuple[Backend, Precision], "str | dict[Mode, str]"]

ENCODER_RECIPES: RecipeTable = {
    (Backend.ONNXRUNTIME, Precision.INT8): {Mode.STATIC: "int8-static", Mode.DYNAMIC: "int8-dynamic"},
    (Backend.OPENVINO, Precision.INT8): {Mode.STATIC: "int8-nncf"},
    (Backend.TENSORRT, Precision.INT8): {Mode.STATIC: "int8-qdq-symmetric"},
    (Backend.ONNXRUNTIME, Precision.FP16): "fp16-onnxruntime",
    (Backend.OPENVINO, Precision.FP16): "fp16-openvino",
    (Backend.OPENVINO, Precision.BF16): "bf16-openvino",
}
# data-free variants of generative bundles (a decoder step is memory-bound: weights are what is
# worth shrinking), each gated on the worst cosine over every output (logits and present K/V)
DATA_FREE_RECIPES: RecipeTable = {
    (Backend.ONNXRUNTIME, Precision.INT8): "int8-dynamic-matmul",
    (Backend.ONNXRUNTIME, Precision.INT4): "int4-weight-only",
    (Backend.OPENVINO, Precision.INT8): "int8-weight-only",
    (Backend.ONNXRUNTIME, Precision.FP16): "fp16-onnxruntime",
    (Backend.OPENVINO, Precision.FP16): "fp16-openvino",
    (Backend.OPENVINO, Precision.BF16): "bf16-openvino",
}


def _data_free(bundle, component, spec, samples, same_shape):
    raise InputError(f"{bundle.family} variants are data-free: no calibration")


@dataclass(frozen=True, kw_only=True)
class QuantizationPolicy:
    recipes: RecipeTable
    fidelity_feeds: Callable[..., feeds.FidelityFeeds]  # (bundle, components, threads)
    # component -> entries that replace `recipes`' for it (a compute-bound tower beside decoders)
    component_recipes: dict[str, RecipeTable] = field(default_factory=dict)
    # (bundle, component, --calib, samples, same_shape) -> (feeds, data set name)
    calibration_feeds: Callable[..., tuple[list[Feeds], str]] = _data_free
    calibration_samples: int = 32  # --samples when not given
    gate_metrics: dict[str, str]  # precision -> the parity figure its gate reads (default "cosine")
    agreement: gates.Agreement | None = None  # generative: the greedy-token gate

    @property
    def generative(self) -> bool:
        return self.agreement is not None

    def table(self, component: str | None = None) -> RecipeTable:
        """The recipes of one component (None: the family's, before any component's own)."""
        return {**self.recipes, **self.component_recipes.get(component or "", {})}


# Encoder-only families: calibrated where the recipe needs it, INT8 gated on the mean cosine (the
# figure targets are stated in; the min is recorded beside it)
ENCODER = QuantizationPolicy(
    recipes=ENCODER_RECIPES,
    fidelity_feeds=feeds.encoder_fidelity_feeds,
    calibration_feeds=feeds.encoder_calibration_feeds,
    gate_metrics={"int8": "cosine_mean"},
)
CAPTION = QuantizationPolicy(
    recipes=DATA_FREE_RECIPES,
    fidelity_feeds=feeds.caption_fidelity_feeds,
    gate_metrics={},
    agreement=gates.CAPTION_AGREEMENT,
)
# data-free like captioners, compared the same way: only what is generated differs
VQA = QuantizationPolicy(
    recipes=DATA_FREE_RECIPES,
    fidelity_feeds=feeds.vqa_fidelity_feeds,
    gate_metrics={},
    agreement=gates.VQA_AGREEMENT,
)
VLM = QuantizationPolicy(
    recipes=DATA_FREE_RECIPES,
    # The vision tower is compute-bound (~106 GMACs a 512-pixel tile): weight-only INT8 keeps f32
    # compute. Static NNCF INT8 runs its MatMuls on INT8 units: SmolVLM-256M twin, 2 threads, AVX-512
    # VNNI EPYC, 638 -> 394 ms a tile, tile cosine vs fp32 0.9987 min. ORT's static Q/DQ measured
    # slower than its dynamic INT8 there (621 vs 577 ms), so ORT keeps the data-free recipe.
    # The decoder's prefill is compute-bound too: its float ops in bf16 where the CPU has it.
    component_recipes={
        "vision": {(Backend.OPENVINO, Precision.INT8): "int8-static-else-weight-only"},
        "decoder": {(Backend.OPENVINO, Precision.INT8): "int8-weight-only-bf16"},
    },
    calibration_feeds=feeds.vlm_calibration_feeds,
    calibration_samples=feeds.VISION_CALIBRATION_TILES,
    fidelity_feeds=feeds.vlm_fidelity_feeds,
    gate_metrics={},
    agreement=gates.VLM_AGREEMENT,
)
# a pipeline's `quantization_policy` -> its policy
POLICIES: dict[str, QuantizationPolicy] = {"encoder": ENCODER, "caption": CAPTION, "vqa": VQA, "vlm": VLM}


def policy_for(family: str, where: str = "bundle") -> QuantizationPolicy:
    """The quantization policy of a family, by the name its runtime pipeline gives."""
    return POLICIES[pipeline_class(family, where).quantization_policy]


def policies() -> dict[str, QuantizationPolicy]:
    """family -> policy, for every registered family."""
    return {name: POLICIES[cls.quantization_policy] for name, cls in pipelines().items()}
