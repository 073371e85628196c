"""quantize: add INT8 / int4 / FP16 / BF16 variants to a bundle, each with its measured fidelity.

One driver for every family: the family's quantization policy (exporter/quantization/policies.py)
names the recipe that builds each (backend, precision), the feeds and how its gate is measured;
exporter/quantization/ holds the recipes (recipe x backend, NNCF's split). Fidelity is measured
against the bundle's fp32 ONNX in ONNX Runtime on held-out inputs the family gives (never the
calibration ones); the fp32 graph itself matches PyTorch at export. No torch is needed here
(tests/test_quantize_no_torch.py runs it with torch and transformers unimportable).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..common.capabilities import names
from ..common.diskspace import check_space
from ..common.fidelity import GATES, compare_all
from ..errors import BackendError, InputError
from ..runtimes.backends import get_backend
from ..runtimes.bundle import Artifact, Bundle, BundleWriter
from ..runtimes.pipelines import pipelines
from .choose import choose
from .ort_attention import has_op, ort_graph_pass
from .quantization import DEFAULT_EXCLUDE, METHODS, MODES, RECIPES, Built, Job, QuantConfig, Recipe  # noqa: F401 - QuantConfig is quantize()'s API
from .quantization.feeds import FidelityFeeds
from .quantization.policies import policies, policy_for
from .quantization.recipe import described
from .stages import Stages


def _supported(table: dict) -> str:
    return ", ".join(f"{b}/{p}" for b, p in sorted(table))


def recipe_for(cfg: QuantConfig, family: str, component: str | None = None) -> Recipe:
    """The family's recipe for cfg's (backend, precision, mode) (a component's own where it has
    one), or a one-line error naming what it has."""
    table = policy_for(family).table(component)
    precisions = sorted({p for _, p in table})
    if cfg.precision not in precisions:
        elsewhere = sorted(n for n, pol in policies().items() if any(p == cfg.precision for _, p in pol.recipes))
        where = f" ({cfg.precision}: {', '.join(elsewhere)} bundles only)" if elsewhere else ""
        raise InputError(
            f"--precision {cfg.precision!r}: {family} bundles are quantized to {', '.join(precisions)}{where}"
        )
    entry = table.get((cfg.backend, cfg.precision))
    if entry is None:
        raise BackendError(
            f"quantize builds no {cfg.backend} {cfg.precision} for {family} bundles: they get "
            f"{_supported(table)}; {cfg.backend}/{cfg.precision} is not built for them"
        )
    if isinstance(entry, dict):
        if cfg.mode not in entry:
            raise InputError(
                f"--mode {cfg.mode} is for {', '.join(f'{b} {p}' for (b, p), e in table.items() if isinstance(e, dict) and cfg.mode in e)} only"
            )
        return RECIPES[entry[cfg.mode]]
    return RECIPES[entry]


def check_config(cfg: QuantConfig, family: str) -> Recipe:
    """Every flag checked before any work; returns the recipe that will run."""
    if cfg.mode not in MODES:
        raise InputError(f"--mode {cfg.mode!r}: choose from {', '.join(MODES)}")
    if cfg.method not in METHODS:
        raise InputError(f"--method {cfg.method!r}: choose from {', '.join(METHODS)}")
    if cfg.min_cosine is not None and not 0 < cfg.min_cosine <= 1:
        raise InputError(f"--min-cosine {cfg.min_cosine}: give a value in (0, 1]")
    if cfg.samples is not None and cfg.samples < 1:
        raise InputError("--samples must be >= 1")
    if not 0 <= cfg.min_agreement <= 1:
        raise InputError(f"--min-agreement {cfg.min_agreement}: give a share in [0, 1]")
    if cfg.mode == "best":
        return check_best(cfg, family)
    recipe = recipe_for(cfg, family)
    if cfg.exclude is None:
        cfg.exclude = list(DEFAULT_EXCLUDE) if recipe.calibration and recipe.exclusions else []
    if cfg.mode == "dynamic" and cfg.calib:
        raise InputError("--mode dynamic takes no --calib (it needs no data)")
    if recipe.calibration and cfg.calib is None:
        raise InputError("static INT8 needs calibration data: --calib DIR|FILE|shapes (or --mode dynamic)")
    return recipe


def check_best(cfg: QuantConfig, family: str) -> Recipe:
    """--mode best: encoder INT8 on onnxruntime (dynamic and, with --calib, static candidates) or
    openvino (NNCF, needs --calib). Returns the recipe of the candidates' default build."""
    entry = policy_for(family).recipes.get((cfg.backend, cfg.precision))
    if (
        cfg.precision != "int8"
        or cfg.backend not in ("onnxruntime", "openvino")
        or entry is None
        or not all(RECIPES[r].exclusions for r in (entry.values() if isinstance(entry, dict) else [entry]))
    ):
        encoders = names(n for n, c in pipelines().items() if not c.generative)  # the registry's, not a list here
        raise InputError(
            f"best chooses among the INT8 recipes of encoder bundles ({encoders}) "
            f"on onnxruntime or openvino; {family} {cfg.backend}/{cfg.precision} has one recipe"
        )
    if cfg.exclude is not None:
        raise InputError(
            "--mode best tries its own exclusions (none, the MLP down-projections, Conv): leave --exclude out"
        )
    if isinstance(entry, dict):  # without data, the data-free recipe where the backend has one
        recipe = RECIPES[entry.get("dynamic" if cfg.calib is None else "static", entry["static"])]
    else:
        recipe = RECIPES[entry]
    if recipe.calibration and cfg.calib is None:
        raise InputError(
            f"--mode best on {cfg.backend}: its INT8 ({recipe.name}) needs calibration data: --calib DIR|FILE|shapes"
        )
    return recipe


def selected_components(bundle: Bundle, cfg: QuantConfig) -> list[str]:
    """--component, checked against the bundle (default: all of its components)."""
    comps = cfg.components or list(bundle.components)
    for c in comps:
        if c not in bundle.components:
            raise InputError(f"{bundle.root} has no component {c!r} (has: {', '.join(bundle.components)})")
    return comps


class Fp32References:
    """What every variant's gates compare to, from the bundle's fp32 graphs: the held-out feeds,
    the fp32 ONNX outputs on them, fp32's greedy tokens. Export passes one to each of its
    quantize calls, so they are computed once per export rather than once per variant; they are
    dropped when the fp32 graphs (their hashes), the components or the threads differ."""

    def __init__(self):
        self._key: tuple | None = None
        self._held_out: FidelityFeeds | None = None
        self._outputs: dict[str, list[dict]] = {}
        self._tokens: list | None = None

    def _for(self, bundle: Bundle, comps: list[str], threads: int | None) -> None:
        graphs = tuple(bundle.manifest["files"][spec["onnx"]]["sha256"] for spec in bundle.components.values())
        key = (str(bundle.root.absolute()), graphs, tuple(comps), threads)
        if key != self._key:
            self._key, self._held_out, self._outputs, self._tokens = key, None, {}, None

    def held_out(self, bundle: Bundle, policy, comps: list[str], threads: int | None, stages: Stages) -> FidelityFeeds:
        self._for(bundle, comps, threads)
        if self._held_out is None:
            with stages.stage("fp32 references: held-out feeds", announce=True):
                self._held_out = policy.fidelity_feeds(bundle, comps, threads)
        return self._held_out

    def outputs(self, comp: str, src: Path, feeds: list, threads: int | None, stages: Stages) -> list[dict]:
        if comp not in self._outputs:
            with stages.stage(f"{comp}: fp32 reference outputs", announce=True):
                sess = get_backend("onnxruntime").open(src, threads=threads)
                self._outputs[comp] = [sess.run(f) for f in feeds]
        return self._outputs[comp]

    def greedy_tokens(self, staged: Bundle, agreement, threads: int | None, stages: Stages) -> list:
        if self._tokens is None:
            with stages.stage("fp32 references: greedy tokens", announce=True):
                self._tokens = agreement.reference(staged, threads)
        return self._tokens


def quantize(
    bundle_path: str | Path,
    cfg: QuantConfig,
    log: Callable[[str], None] = lambda s: None,
    stages: Stages | None = None,
    references: Fp32References | None = None,
) -> Bundle:
    """`stages`: export's stage timer (default: one logging to ``log``; each component's build +
    gate and the token gate are logged as stages with their peak RSS). `references`: fp32
    references shared by the variants of one export (default: computed here)."""
    stages = stages or Stages(log)
    references = references or Fp32References()
    bundle = Bundle.open(bundle_path)
    policy = policy_for(bundle.family, str(bundle.root))
    recipe = check_config(cfg, bundle.family)
    be = get_backend(cfg.backend)
    # TensorRT's int8 input is a Q/DQ ONNX made and checked here with ORT; the plan is built on the GPU
    if not recipe.backend == "tensorrt" and (why := be.available()) is not None:
        raise BackendError(why)
    if recipe.backend == "tensorrt" and "tensorrt" not in bundle.manifest:
        raise InputError(f"{bundle.root} was exported for cpu: export with --target gpu (or jetson-*) for TensorRT")
    if cfg.mode_given and not isinstance(policy.recipes.get((cfg.backend, cfg.precision)), dict):
        log(
            f"--mode {cfg.mode} does not apply here: {bundle.family} {cfg.backend} {cfg.precision} has one recipe, "
            f"{recipe.name} ({recipe.summary})"
        )
    comps = selected_components(bundle, cfg)
    # each component's recipe: the family's, or the component's own (a VLM's vision tower)
    recipes = {c: recipe if cfg.mode == "best" else recipe_for(cfg, bundle.family, c) for c in comps}
    if not any(r.calibration for r in recipes.values()) and cfg.mode != "best" and (cfg.calib or cfg.min_cosine):
        log(f"{recipe.name} is data-free ({recipe.summary}): --calib and --min-cosine are not used")
    metric = policy.gate_metrics.get(cfg.precision, "cosine")
    t0 = time.perf_counter()
    if room := check_space(bundle.root, quantize_bytes(bundle, comps, cfg.precision), f"{cfg.backend}/{cfg.precision}"):
        log(room)
    with BundleWriter(bundle.root, base=bundle) as w, tempfile.TemporaryDirectory(prefix="mmdeploy-q-") as tmp:
        held_out = references.held_out(bundle, policy, comps, cfg.threads, stages)

        def ship(job: Job, built: Built, recipe_name: str, calib_name: str | None, reference: str, t: float) -> dict:
            """Fuse (ORT graph passes), register, gate and record one component's build; its parity."""
            comp = job.component
            graph_pass = ort_graph_pass(bundle.manifest.get("chat"), comp, cfg.backend)
            if graph_pass and not built.tensorrt:
                graph = w.stage_dir / built.files[0]
                if not has_op(graph, graph_pass.op):  # int4 reuses the int8 variant's encoder graphs, fused once
                    with stages.stage(f"{comp}: {cfg.backend}/{cfg.precision} {graph_pass.op}"):
                        graph_pass.run(graph, graph)
                built.runtime = {**built.runtime, **graph_pass.runtime}
                built.parity = None  # measured again below, on the graph that ships
            for f in built.files:  # re-hashed even when listed: a variant quantized again replaces its files
                w.register(f)
            backend = "onnxruntime" if built.tensorrt else recipe.backend
            par = built.parity or job.fidelity(w.stage_dir / built.files[0], built.runtime, backend)
            par["reference"] = reference + (" (run in ONNX Runtime)" if built.tensorrt else "")
            gate = {"min_cosine": job.gate_at, "metric": metric, "passed": bool(par[metric] >= job.gate_at)}
            if RECIPES[recipe_name].exclusions:
                built.recipe.setdefault(
                    "calibration", {"data": cfg.calib or calib_name, "samples": len(job.calib)} if job.calib else None
                )
                built.recipe.setdefault("exclude", cfg.exclude)  # --mode best records the candidate's own
            built.recipe.setdefault("recipe", recipe_name)
            log(
                f"{comp}: {cfg.backend}/{cfg.precision} ({built.recipe['recipe']}) {metric} {par[metric]:.5f} vs fp32 in "
                f"{time.perf_counter() - t:.1f}s"
                + ("" if gate["passed"] else f": below the gate {job.gate_at}, kept but never chosen by default")
            )
            stages.record(f"{comp}: {cfg.backend}/{cfg.precision} quantize + gate", time.perf_counter() - t)
            if built.tensorrt:
                trt = w.manifest["tensorrt"]
                trt["int8_onnx"][comp] = {"path": built.files[0], "parity": par, "gate": gate, "recipe": built.recipe}
                if "int8" not in trt["precisions"]:
                    trt["precisions"].append("int8")
                return par
            w.add_artifact(
                Artifact(
                    component=comp,
                    backend=cfg.backend,
                    precision=cfg.precision,
                    path=built.files[0],
                    files=built.files,
                    runtime=built.runtime,
                    built_for={"target": bundle.manifest.get("target", "cpu"), cfg.backend: be.version()},
                    parity=par,
                    gate=gate,
                    recipe=built.recipe,
                )
            )
            return par

        fallbacks = []  # (job, the build shipped (its .fallback the safer one), its parity, ship's other arguments)
        for comp in comps:
            src = w.stage_dir / bundle.components[comp]["onnx"]
            feeds, reference = held_out[comp]
            refs = references.outputs(comp, src, feeds, cfg.threads, stages)
            comp_recipe = recipes[comp]
            calibrated = comp_recipe.calibration or cfg.mode == "best"
            gate_at = cfg.min_cosine if cfg.min_cosine and calibrated else GATES[cfg.precision]
            calib, calib_name = None, None
            if comp_recipe.calibration:
                calib, calib_name = policy.calibration_feeds(
                    bundle, comp, cfg.calib, cfg.samples or policy.calibration_samples, cfg.method != "minmax"
                )
                method = f" ({cfg.method})" if comp_recipe.backend == "onnxruntime" else ""  # NNCF has its own
                log(f"{comp}: calibrating on {len(calib)} samples of {calib_name}{method}")
            log(
                f"{comp}: {cfg.backend}/{cfg.precision} ({'--mode best' if cfg.mode == 'best' else comp_recipe.name}) ..."
            )
            t = time.perf_counter()
            job = Job(
                src=src,
                w=w,
                component=comp,
                cfg=cfg,
                calib=calib,
                workdir=Path(tmp),
                fidelity=_fidelity(cfg, refs, feeds, [o["name"] for o in bundle.components[comp]["outputs"]]),
                gate_at=gate_at,
                log=log,
            )
            if cfg.mode == "best":
                built = choose(
                    job,
                    lambda m: recipe_for(replace(cfg, mode=m), bundle.family),
                    cfg.backend,
                    metric,
                    gate_at,
                    feeds[0],
                    lambda p, rt, name: get_backend(name).open(p, threads=cfg.threads, options=rt),
                    cfg.backend == "openvino" and be.cpu_supports("bf16"),
                )
            else:
                built = comp_recipe.build(job)
            args = (comp_recipe.name, calib_name, reference)
            par = ship(job, built, *args, t)
            if built.fallback is not None:
                fallbacks.append((job, built, par, args))
        # generative variants are gated on their greedy tokens too (their policy's agreement)
        if policy.generative and recipe.backend != "tensorrt":
            with stages.stage(f"{cfg.backend}/{cfg.precision} greedy-agreement gate", announce=True):
                share = _record_agreement(w, policy, cfg, log, references.greedy_tokens, stages)
            # the faster builds lost the tokens: their fallbacks, one at a time in component order,
            # until the variant keeps its gate
            for job, first, first_par, args in fallbacks:
                if share is None or share >= cfg.min_agreement:
                    break
                t = time.perf_counter()
                built = first.fallback(job)
                built.recipe["replaced"] = {
                    "build": described(first.recipe),
                    "cosine": round(first_par["cosine"], 5),
                    "agreement": round(share, 4),
                    "why": f"the variant's greedy tokens followed fp32 for {share:.0%} < {cfg.min_agreement:.0%}",
                }
                log(
                    f"{job.component}: {described(first.recipe)} loses the token gate ({share:.0%}): "
                    f"{described(built.recipe)} instead"
                )
                ship(job, built, *args, t)
                with stages.stage(f"{cfg.backend}/{cfg.precision} greedy-agreement gate, again", announce=True):
                    share = _record_agreement(w, policy, cfg, log, references.greedy_tokens, stages)
        keep = [c["onnx"] for c in bundle.components.values()]
        keep += [v["path"] for v in w.manifest.get("tensorrt", {}).get("int8_onnx", {}).values()]
        w.remove_unreferenced(keep=keep)
    log(f"{cfg.backend}/{cfg.precision} added to {bundle.root} in {time.perf_counter() - t0:.1f}s")
    return Bundle.open(bundle.root)


def _fidelity(cfg: QuantConfig, refs: list[dict], feeds: list, names: list[str]) -> Callable[..., dict[str, Any]]:
    """A built graph's parity against the fp32 outputs `refs` on the held-out `feeds`."""

    def fidelity(path: Path, runtime: dict | None = None, backend: str = "onnxruntime") -> dict[str, Any]:
        sess = get_backend(backend).open(path, threads=cfg.threads, options=runtime)
        return compare_all(refs, [sess.run(f) for f in feeds], names)

    return fidelity


# bytes a variant writes per byte of its fp32 graph
_WRITE_FACTOR = {"int8": 0.5, "fp16": 0.5, "int4": 0.4}


def quantize_bytes(bundle: Bundle, comps: list[str], precision: str) -> int:
    """About what quantize writes beside the bundle: the new graphs, and the stage's copies of the
    external-weight files (hard links elsewhere cost nothing)."""
    size = lambda rel: bundle.path(rel).stat().st_size if bundle.path(rel).is_file() else 0  # noqa: E731
    fp32 = sum(size(bundle.components[c]["onnx"]) + size(bundle.components[c]["onnx"] + ".data") for c in comps)
    copies = sum(size(rel) for rel in bundle.manifest.get("files", {}) if rel.endswith(".onnx.data"))
    return int(fp32 * _WRITE_FACTOR.get(precision, 1.0) * 1.1) + copies + (1 << 20)


def _record_agreement(w, policy, cfg: QuantConfig, log, fp32_tokens: Callable, stages: Stages) -> float | None:
    """Generative variants: how far their greedy tokens follow fp32's, in the manifest beside the
    per-graph cosines, and a gate of the whole variant: below ``cfg.min_agreement`` each of its
    graphs' gates fails (kept, reported, never chosen by default), whatever their cosines."""
    from dataclasses import asdict

    staged = Bundle(w.stage_dir, {**w.manifest, "files": dict(w.files), "artifacts": [asdict(a) for a in w.artifacts]})
    if len(staged.find(backend=cfg.backend, precision=cfg.precision)) < len(staged.components):
        return None
    ref = fp32_tokens(staged, policy.agreement, cfg.threads, stages)
    share, what = policy.agreement.measure(staged, cfg.backend, cfg.precision, cfg.threads, reference=ref)
    checks = w.manifest.setdefault("variant_checks", {}).setdefault("greedy_agreement_vs_fp32", {})
    passed = share >= cfg.min_agreement
    checks[f"{cfg.backend}/{cfg.precision}"] = {
        "agreement": round(share, 4),
        "inputs": what,
        "min_agreement": cfg.min_agreement,
        "passed": passed,
    }
    for a in w.artifacts:
        if (a.backend, a.precision) == (cfg.backend, cfg.precision):
            a.gate["min_agreement"] = cfg.min_agreement
            a.gate["agreement"] = round(share, 4)
            a.gate["passed"] = bool(a.gate.get("passed")) and passed
    log(
        f"{cfg.backend}/{cfg.precision}: greedy tokens follow fp32 for {share:.0%} ({what})"
        + ("" if passed else f": below --min-agreement {cfg.min_agreement:g}, kept but never chosen by default")
    )
    return share
