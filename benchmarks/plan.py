"""What a bench will run, decided before anything runs: the bundle's variants that match the
filters, the rows (task x runner x batch) and the ones skipped with the reason, the data set.

``plan_bench`` opens the manifest and asks the backends whether they are installed; it loads no
model and times nothing, so ``mmdeploy bench --plan`` answers in a moment and a test can check it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from ..common.capabilities import Capability
from ..errors import InputError, MMDeployError
from ..runtimes.backends import get_backend
from ..runtimes.bundle import Artifact, Bundle
from ..runtimes.feeds import component_kind
from ..runtimes.pipelines import pipeline_class
from ..runtimes.select import select_variant

__all__ = ["BenchConfig", "BenchPlan", "PlanRow", "plan_bench"]

ENCODERS, GENERATION, CHAT = "encoders", "generation", "chat"


@dataclass
class BenchConfig:
    backends: list[str] | None = None
    precisions: list[str] | None = None
    batches: list[int] = field(default_factory=lambda: [1])
    runs: int = 20
    warmup: int = 3
    threads: int | None = None
    data: str | None = None  # None = real photos/captions; "shapes" or a folder later
    pytorch: bool = True
    record: bool = True  # write batch-1 latencies into the manifest so load() picks the fastest here
    max_new_tokens: int = 20  # caption bundles: the `generate` rows
    num_beams: int = 1
    interleave: bool = False  # encoder bundles: alternate every variant's calls run by run (noise hits all alike)


@dataclass(frozen=True)
class PlanRow:
    """One row of the report to be: ``task`` (a component, ``generate`` or ``conversation``) run by
    ``runner`` (a backend, ``pytorch`` or ``teacher``) at ``batch``; ``skip`` says why it will not run."""

    task: str
    runner: str
    precision: str
    batch: int | None
    skip: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class BenchPlan:
    bundle: Bundle
    kind: str  # ENCODERS, GENERATION or CHAT: which measurement the bundle's pipeline gets
    task: str  # the pipeline's task (zero-shot, pair-similarity, captioning, ...): picks the accuracy
    variants: list[Artifact]  # the artifacts that match the filters (runnable here or not)
    default: tuple[str, str] | None  # the variant load() picks today
    data: str | None  # the data set's name (chat: one real photo)
    rows: list[PlanRow]
    teacher: dict[str, Any] | None = None  # a distilled student's teacher (manifest source), with --pytorch
    notes: list[str] = field(default_factory=list)

    def runs_here(self, a: Artifact) -> bool:
        return get_backend(a.backend).available() is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle.root),
            "family": self.bundle.family,
            "kind": self.kind,
            "task": self.task,
            "default_variant": "/".join(self.default) if self.default else None,
            "data": self.data,
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
        }


def plan_bench(path: str, cfg: BenchConfig) -> BenchPlan:
    """The plan for ``path`` under ``cfg`` (InputError for filters that match nothing, bad batches)."""
    bundle = Bundle.open(path)
    arts = [
        a
        for a in bundle.artifacts
        if (not cfg.backends or a.backend in cfg.backends) and (not cfg.precisions or a.precision in cfg.precisions)
    ]
    if not arts:
        have = ", ".join(sorted({f"{a.backend}/{a.precision}" for a in bundle.artifacts}))
        raise InputError(f"{path} has no variant matching the filters (has: {have})")
    for b in cfg.batches:
        if b < 1:
            raise InputError(f"--batch {b}: batch sizes must be >= 1")
    default = default_variant(bundle)
    pipeline = pipeline_class(bundle.family, str(bundle.root))
    kind = CHAT if pipeline.can(Capability.CHAT) else GENERATION if pipeline.generative else ENCODERS
    notes = []
    if cfg.interleave and kind != ENCODERS:
        notes.append("--interleave applies to encoder bundles; this one is timed variant by variant")
    if kind == CHAT:
        return BenchPlan(bundle, kind, pipeline.task, arts, default, None, _chat_rows(bundle, arts, cfg), notes=notes)
    data = cfg.data or default_data_name(bundle)
    if kind == GENERATION:
        return BenchPlan(
            bundle, kind, pipeline.task, arts, default, data, _generation_rows(bundle, arts, cfg), notes=notes
        )
    teacher = bundle.source.get("distilled_from") if cfg.pytorch else None
    return BenchPlan(
        bundle,
        kind,
        pipeline.task,
        arts,
        default,
        data,
        _encoder_rows(bundle, arts, cfg, bool(teacher)),
        teacher or None,
        notes,
    )


def default_variant(bundle: Bundle) -> tuple[str, str] | None:
    try:
        return select_variant(bundle)
    except MMDeployError:
        return None


def default_data_name(bundle: Bundle) -> str:
    """Real sentences for text-only bundles; real photos when scikit-image is installed, else shapes."""
    if "images" not in {component_kind(bundle, c) for c in bundle.components}:
        return "sentences"
    return "photos" if importlib.util.find_spec("skimage") is not None else "shapes"


def _unavailable(backend: str) -> str | None:
    why = get_backend(backend).available()
    return f"{backend} does not run here: {why}" if why is not None else None


def _reference_skip() -> str | None:
    """Why the PyTorch rows cannot run here, where that is known without loading anything."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        return "torch / transformers are not installed (the export extra)"
    return None


def _encoder_rows(bundle: Bundle, arts: list[Artifact], cfg: BenchConfig, teacher: bool) -> list[PlanRow]:
    rows: list[PlanRow] = []
    ref_skip = _reference_skip()
    for comp in bundle.components:
        for runner in ("pytorch", "teacher") if teacher else ("pytorch",):
            if cfg.pytorch:
                rows += [PlanRow(comp, runner, "fp32", b, ref_skip) for b in cfg.batches]
        for a in arts:
            if a.component == comp:
                rows += [PlanRow(comp, a.backend, a.precision, b, _unavailable(a.backend)) for b in cfg.batches]
    return rows


def complete_variants(bundle: Bundle, arts: list[Artifact]) -> list[tuple[str, str]]:
    """(backend, precision) of the variants with an artifact for every component, sorted."""
    return sorted(
        {
            (a.backend, a.precision)
            for a in arts
            if len(bundle.find(backend=a.backend, precision=a.precision)) >= len(bundle.components)
        }
    )


def _variant_skip(bundle: Bundle, complete: list[tuple[str, str]], backend: str, precision: str) -> str | None:
    if (backend, precision) not in complete:
        return f"incomplete: not every component ({', '.join(bundle.components)}) has a {backend}/{precision} artifact"
    return _unavailable(backend)


def _generation_rows(bundle: Bundle, arts: list[Artifact], cfg: BenchConfig) -> list[PlanRow]:
    complete = complete_variants(bundle, arts)
    runners = [("pytorch", "fp32", _reference_skip())] if cfg.pytorch else []
    runners += [
        (b, p, _variant_skip(bundle, complete, b, p)) for b, p in sorted({(a.backend, a.precision) for a in arts})
    ]
    tasks = [*bundle.components, "generate"]
    return [PlanRow(t, r, p, b, skip) for r, p, skip in runners for b in cfg.batches for t in tasks]


def _chat_rows(bundle: Bundle, arts: list[Artifact], cfg: BenchConfig) -> list[PlanRow]:
    complete = complete_variants(bundle, arts)
    rows = [PlanRow("conversation", "pytorch", "fp32", 1, _reference_skip())] if cfg.pytorch else []
    for b, p in sorted({(a.backend, a.precision) for a in arts}):
        rows.append(PlanRow("conversation", b, p, 1, _variant_skip(bundle, complete, b, p)))
    return rows
