"""export: checkpoint -> bundle with ONNX per component and every requested backend variant,
each checked against PyTorch on real inputs before the bundle is swapped in."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..common.diskspace import check_space
from ..common.env import library_versions
from ..common.fidelity import GATES, compare_all
from ..common.locks import writer_lock
from ..errors import BackendError, ExportError, InputError, ParityError, require
from ..runtimes.backends import get_backend
from ..runtimes.bundle import Artifact, Bundle, BundleWriter, check_replaceable
from ..runtimes.session import BuildResult
from .checkpoint import Checkpoint, resolve
from .families import family_exporter
from .graph import OPSET, externalize_weights
from .ort_attention import GraphPass, ort_graph_pass
from .reference import TorchSession
from .stages import Stages

torch = require("torch", "export")

TARGETS = ("cpu", "gpu", "jetson-orin", "jetson-xavier")
DEFAULT_PROFILE = {"batch": [1, 8, 32], "sequence": [1, 77, 77]}


# precisions that `quantize` adds after the fp32 graph exists (export runs it in the same go)
POST_EXPORT = ("int8", "fp16", "int4")


def plan_variants(backends: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """Every (backend, precision) pair the backend builds; each precision needs one backend."""
    pairs = []
    for precision in precisions:
        got = [b for b in backends if precision in get_backend(b).capabilities.builds]
        if not got:
            raise BackendError(
                f"none of the backends {', '.join(backends)} builds {precision}; "
                + "; ".join(f"{b}: {', '.join(get_backend(b).capabilities.builds)}" for b in backends)
            )
        pairs += [(b, precision) for b in got]
    for b in backends:
        why = get_backend(b).available()
        if why:
            raise BackendError(why)
    return pairs


def export(
    source: str,
    out: str | Path,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    target: str = "cpu",
    random_weights: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = lambda s: None,
    calib: str | None = None,
    method: str = "minmax",
    min_cosine: float | None = None,
    tensorrt_precisions: list[str] | None = None,
    stages: Stages | None = None,
) -> Bundle:
    stages = stages or Stages(log)
    backends = backends or ["onnxruntime"]
    precisions = precisions or ["fp32"]
    check_replaceable(Path(out).absolute())  # before minutes of work, not after
    best = "best" in precisions
    if best:
        precisions = best_precisions(precisions, backends, target)
    if target not in TARGETS:
        raise BackendError(f"target {target!r} is not supported yet; supported: {', '.join(TARGETS)}")
    gpu_precisions: list[str] = tensorrt_precisions or []
    if target != "cpu" and not gpu_precisions:
        # TensorRT plans are built on the GPU that runs them (`mmdeploy build`); the bundle
        # carries the ONNX, the build settings and, for int8, a symmetric Q/DQ ONNX.
        gpu_precisions = [p for p in precisions if p in ("fp32", "fp16", "int8")] or ["fp16"]
        backends = [b for b in backends if b != "tensorrt"] or ["onnxruntime"]
        precisions = ["fp32"] + [p for p in precisions if p == "int8"]
    elif "tensorrt" in backends:
        raise BackendError("--backend tensorrt needs --target gpu, jetson-orin or jetson-xavier")
    post = [p for p in precisions if p in POST_EXPORT]
    if post:
        return _export_then_quantize(
            source,
            Path(out),
            backends,
            [p for p in precisions if p not in POST_EXPORT] or ["fp32"],
            post,
            dict(
                target=target,
                random_weights=random_weights,
                threads=threads,
                log=log,
                tensorrt_precisions=gpu_precisions,
                stages=stages,
            ),
            calib,
            method,
            min_cosine,
            best,
        )
    variants = plan_variants(backends, precisions)
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    log(f"loading {source}{' (random weights)' if random_weights else ''}")
    with stages.stage("load"):
        ckpt = resolve(source, random_weights=random_weights)
        fam = family_exporter(ckpt)
    out = Path(out)
    if room := check_space(out, export_bytes(ckpt.model, variants), f"export of {ckpt.name}"):
        log(room)
    extra = fam.manifest_extra()
    with BundleWriter(out, log=log) as w:
        components = {}
        for comp in fam.components:
            inputs = fam.input_names(comp)
            # multi-output components (a decoder step: logits + present KV) name all their outputs
            outputs = fam.output_names(comp)
            rel = f"onnx/{comp}.onnx"
            t = time.perf_counter()
            with stages.stage(f"{comp}: ONNX export"):
                module = fam.module(comp)
                fam.export_component(comp, module, w.stage(rel), log)  # decoders: dynamo with KV caches
                data = externalize_weights(w.stage(rel))
            w.register(rel)
            if data:
                w.register(f"onnx/{data}")
            log(f"{comp}: ONNX exported in {time.perf_counter() - t:.1f}s")
            components[comp] = {**fam.specs(comp), "onnx": rel}

            cases = fam.parity_cases(comp)  # (label, feeds): real inputs, a decoder's first and later steps
            with stages.stage(f"{comp}: PyTorch reference"):
                refs = [TorchSession(module, inputs, outputs).run(f) for _, f in cases]
            for backend, precision in variants:
                be = get_backend(backend)
                try:
                    with stages.stage(f"{comp}: {backend}/{precision} build"):  # OpenVINO: the IR conversion
                        built = be.build(w.stage_dir / rel, w.stage_dir, precision, comp)
                except BackendError as exc:
                    log(f"{comp}: skipping {backend}/{precision}: {exc}")
                    continue
                if graph_pass := ort_graph_pass(extra.get("chat"), comp, backend):
                    with stages.stage(f"{comp}: {backend}/{precision} {graph_pass.op}"):
                        built = _fused_graph(w, built, graph_pass)
                for f in built.files:
                    if f not in w.files:
                        w.register(f)
                with stages.stage(f"{comp}: {backend}/{precision} parity"):
                    sess = be.open(w.stage_dir / built.path, threads=threads, options=built.runtime)
                    parity = compare_all(refs, [sess.run(f) for _, f in cases], outputs)
                parity["inputs"] = "; ".join(label for label, _ in cases)
                gate = {"min_cosine": GATES[precision], "passed": parity["cosine"] >= GATES[precision]}
                log(
                    f"{comp}: {backend}/{precision} cosine {parity['cosine']:.6f} "
                    f"max|diff| {parity['max_abs_diff']:.2e} {'ok' if gate['passed'] else 'BELOW GATE'}"
                )
                if precision == "fp32" and not gate["passed"]:
                    raise ParityError(
                        f"{comp} on {backend}/fp32 differs from PyTorch: cosine {parity['cosine']:.6f} "
                        f"< {GATES['fp32']} (max abs diff {parity['max_abs_diff']:.3g}); bundle not written"
                    )
                w.add_artifact(
                    Artifact.from_build(built, comp, backend, precision, target=target, parity=parity, gate=gate)
                )
            del module
        if not any(a.precision == p for a in w.artifacts for p in precisions):
            raise ExportError("no variant could be built")
        for src, rel in fam.bundle_files():
            w.add_file(src, rel)
        fam.write_files(w)  # files the family derives (e.g. a tokenizer with added specials)
        if "preprocess" in extra:
            w.write_json(extra["preprocess"]["file"], extra["preprocess"]["config"])
        w.manifest.update(
            {
                "model": ckpt.name,
                "family": fam.family,
                "source": ckpt.source,
                "exporter": {"versions": library_versions(), "opset": OPSET, "seconds": None},
                "target": target,
                "components": components,
                **extra,
            }
        )
        if gpu_precisions:
            max_sequence = (extra.get("tokenizer") or {}).get("max_length")
            w.manifest["tensorrt"] = tensorrt_settings(ckpt, components, target, gpu_precisions, max_sequence)
        # end-to-end checks on the staged bundle (e.g. generated tokens)
        with stages.stage("variant checks"):
            checks = fam.check_variants(w, threads, log)
        if checks is not None:
            w.manifest["variant_checks"] = checks
        w.manifest["exporter"]["seconds"] = round(time.perf_counter() - t0, 1)
        w.manifest["exporter"]["stages"] = stages.records
    log(f"bundle written to {out} in {time.perf_counter() - t0:.1f}s")
    return Bundle.open(out)


def _fused_graph(w: BundleWriter, built: BuildResult, graph_pass: GraphPass) -> BuildResult:
    """ONNX Runtime's fp32 graph with its attention as one contrib op (ort_attention.py): written
    beside the portable graph, whose external weights file it reads (ORT reads external data only
    from the graph's own folder), so the weights are stored once."""
    dst = built.path.replace(".onnx", graph_pass.suffix)
    graph_pass.run(w.stage_dir / built.path, w.stage(dst))
    return BuildResult(
        path=dst,
        files=[dst, *built.files[1:]],
        runtime={**built.runtime, **graph_pass.runtime},
        built_for=built.built_for,
    )


# bytes written per fp32 byte of weights, by (backend, precision): the fp32 ONNX is written once,
# an OpenVINO IR again (bf16 runs the fp32 IR), quantized graphs are smaller
_WRITE_FACTOR = {"fp32": 1.0, "bf16": 0.0, "fp16": 0.5, "int8": 0.5, "int4": 0.4}


def export_bytes(model, variants: list[tuple[str, str]]) -> int:
    """About how much an export writes: the fp32 ONNX (the weights' fp32 size) plus each variant's
    graph; checked against the free space before the work, not found out after ten minutes."""
    fp32 = sum(t.numel() * 4 for t in model.parameters()) + sum(t.numel() * 4 for t in model.buffers())
    factor = 1.0 + sum(_WRITE_FACTOR.get(p, 1.0) for b, p in variants if (b, p) != ("onnxruntime", "fp32"))
    return int(fp32 * factor * 1.1) + (1 << 20)  # tokenizer and config files, the manifest


def tensorrt_settings(
    ckpt: Checkpoint, components: dict, target: str, precisions: list[str], max_sequence: int | None = None
) -> dict:
    """What `mmdeploy build --backend tensorrt` needs on the device: profiles, precisions.

    `max_sequence` (the tokenizer's max_length, at most the position table) replaces the
    default profile's sequence 77 and caps a registry profile: no plan for positions the
    model does not have."""
    from ..runtimes.backends.tensorrt import WORKSPACE_MB, derive_profile

    axes = dict(DEFAULT_PROFILE)
    limits = {}
    if max_sequence:
        limits["sequence"] = int(max_sequence)
        axes["sequence"] = [1, int(max_sequence), int(max_sequence)]
    axes.update((ckpt.registry_entry or {}).get("profile") or {})
    return {
        "target": target,
        "precisions": [p for p in precisions if p != "int8"],  # int8 joins once its Q/DQ ONNX exists
        "profiles": {
            c: {k: [list(x) for x in v] for k, v in derive_profile(spec["inputs"], axes, limits=limits).items()}
            for c, spec in components.items()
        },
        "workspace_mb": WORKSPACE_MB[target],
        "dla_core": None,
        "int8_onnx": {},
    }


def best_precisions(precisions: list[str], backends: list[str], target: str) -> list[str]:
    """--precision best: fp32, bf16 where OpenVINO runs it natively here, and INT8 by `--mode best`
    on each backend; export then times every variant here so the default is the fastest passing."""
    if precisions != ["best"]:
        raise InputError(
            "--precision best stands alone: it builds fp32, bf16 (openvino, where this CPU has it) "
            "and the fastest INT8 recipe that passes, then times them here"
        )
    if target != "cpu":
        raise InputError("--precision best times the variants on this CPU: for --target gpu/jetson name the precisions")
    ov = get_backend("openvino")  # a backend that is not installed is refused by plan_variants, before any work
    bf16 = "openvino" in backends and ov.available() is None and ov.cpu_supports("bf16")
    return ["fp32"] + (["bf16"] if bf16 else []) + ["int8"]


def _export_then_quantize(
    source, out: Path, backends, precisions, post, kw, calib, method, min_cosine, best: bool = False
) -> Bundle:
    """export + quantize as one atomic step: built beside `out`, swapped in only when all passed."""
    import shutil

    from ..runtimes.bundle import sibling_dir
    from .checkpoint import source_family
    from .choose import measure_variants
    from .quantize import Fp32References, QuantConfig, check_config, quantize

    stages = kw["stages"]
    family = source_family(source)
    if family is None:
        resolve(source, random_weights=kw["random_weights"])  # raises the one-line reason
    jobs = []
    if kw["target"] != "cpu" and "int8" in post:
        jobs.append(
            QuantConfig(
                precision="int8",
                backend="tensorrt",
                calib=calib,
                method=method,
                min_cosine=min_cosine,
                threads=kw["threads"],
            )
        )
        check_config(jobs[-1], family)
        post = [p for p in post if p != "int8"]
    for precision in post:
        fits, refused = [], []
        for backend in backends:
            if best and backend == "openvino" and calib is None:
                kw["log"]("int8: openvino's NNCF INT8 needs --calib; skipped for that backend")
                continue
            cfg = QuantConfig(
                precision=precision,
                backend=backend,
                calib=calib,
                method=method,
                min_cosine=min_cosine,
                mode="best"
                if best
                else "static"
                if calib or precision != "int8" or backend != "onnxruntime"
                else "dynamic",
                threads=kw["threads"],
            )
            try:
                check_config(cfg, family)  # bad flags fail before any work
                fits.append(cfg)
            except BackendError as exc:  # e.g. int4 on openvino: the backends that build it get it
                refused.append(exc)
        if not fits and refused:
            raise refused[0]
        for exc in refused:
            kw["log"](f"{precision}: {exc}; skipped for that backend")
        jobs += fits
    tmp = sibling_dir(out.absolute(), "staging")  # a later run removes it if this one is killed
    with writer_lock(out, "bundle"):  # the whole export+quantize, as one writer of `out`
        try:
            export(source, tmp, backends, precisions, **kw)
            references = Fp32References()  # computed once, compared to by every variant's gates
            for cfg in jobs:
                quantize(tmp, cfg, log=kw["log"], stages=stages, references=references)
            if best:
                with stages.stage("timing the variants"):
                    measure_variants(tmp, kw["threads"], kw["log"])
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with BundleWriter(out, log=kw["log"], adopt=tmp) as w:
            # swaps tmp in, keeping the variants there built from the same fp32 graphs
            w.manifest.setdefault("exporter", {})["stages"] = stages.records
    return Bundle.open(out)
