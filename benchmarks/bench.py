"""bench: every variant of a bundle against the PyTorch reference, same inputs, one process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import InputError, MMDeployError
from ..runtimes.bundle import Bundle
from ..runtimes.select import open_session, select_variant
from ..runtimes.session import backend_module
from .env import environment
from .datasets import DataSet, open_dataset
from .metrics import compare


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


def percentiles(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
    }


def time_session(run: Callable[[], Any], runs: int, warmup: int, tick: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
        tick()
    return times


class Inputs:
    """Real inputs per component and batch, built with the runtime's own pre-processing."""

    def __init__(self, bundle: Bundle, data: DataSet):
        from ..runtimes.preprocess import ImagePreprocessor
        from ..runtimes.tokenize import TextTokenizer

        self.bundle, self.data = bundle, data
        m = bundle.manifest
        # components named "vision" take images; "text" take token ids (every family so far)
        unknown = set(bundle.components) - {"vision", "text"}
        if unknown:
            raise InputError(f"bench does not know how to feed components {sorted(unknown)} yet")
        self.preprocess = ImagePreprocessor.from_config(m["preprocess"]["config"]) if "preprocess" in m else None
        self.tokenizer = TextTokenizer.from_file(
            bundle.path(m["tokenizer"]["file"]), max_length=m["tokenizer"]["max_length"], pad_id=m["tokenizer"].get("pad_id")
        )
        self._cache: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def images(self, images: list) -> dict[str, np.ndarray]:
        return {"pixel_values": self.preprocess(images)}

    def texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.tokenizer(texts)

    def feeds(self, component: str, batch: int) -> dict[str, np.ndarray]:
        key = (component, batch)
        if key not in self._cache:
            if component == "vision":
                self._cache[key] = self.images(self.data.image_batch(batch))
            else:
                self._cache[key] = self.texts(self.data.text_batch(batch))
        return self._cache[key]


def default_data(bundle: Bundle) -> DataSet:
    """Real sentences for text-only bundles; real photos when scikit-image is installed, else shapes."""
    if "vision" not in bundle.components:
        return open_dataset("sentences")
    try:
        return open_dataset("photos")
    except MMDeployError:
        return open_dataset("shapes")


def pytorch_reference(bundle: Bundle, log: Callable[[str], None]):
    """The source checkpoint's family exporter (holds the torch modules), or None with a reason."""
    try:
        from ..exporter.checkpoint import resolve, state_sha256
        from ..exporter.export import family_exporter
    except MMDeployError as exc:  # torch / transformers not installed
        log(f"no PyTorch reference: {exc}")
        return None
    src = bundle.manifest.get("source", {})
    try:
        if src.get("random_weights"):
            ckpt = resolve(src["registry"], random_weights=True)
            if state_sha256(ckpt.model) != src.get("weights_sha256"):
                log("no PyTorch reference: the random-weights twin rebuilt here differs from the exported one")
                return None
        else:
            ckpt = resolve(src.get("path") or src.get("registry"))
        return family_exporter(ckpt)
    except MMDeployError as exc:
        log(f"no PyTorch reference: {exc}")
        return None


def bench(path: str, cfg: BenchConfig, log: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
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
    try:
        default = select_variant(bundle)
    except MMDeployError:
        default = None
    data = open_dataset(cfg.data) if cfg.data else default_data(bundle)
    inputs = Inputs(bundle, data)
    ref = pytorch_reference(bundle, log) if cfg.pytorch else None

    comps = list(bundle.components)
    n_sessions = len(arts) + (len(comps) if ref is not None else 0)
    task = progress.add_task("bench", total=n_sessions * len(cfg.batches) * cfg.runs) if progress else None
    tick = (lambda: progress.advance(task)) if progress else (lambda: None)

    rows: list[dict[str, Any]] = []
    for comp in comps:
        out_name = bundle.components[comp]["outputs"][0]["name"]
        ref_out: dict[int, np.ndarray] = {}
        ref_p50: dict[int, float] = {}
        if ref is not None:
            from ..exporter.reference import TorchSession

            tsess = TorchSession(ref.module(comp), ref.input_names(comp), [out_name], cfg.threads)
            for b in cfg.batches:
                feeds = inputs.feeds(comp, b)
                ref_out[b] = tsess.run(feeds)[out_name]
                if progress:
                    progress.update(task, description=f"{comp} pytorch b{b}")
                times = time_session(lambda: tsess.run(feeds), cfg.runs, cfg.warmup, tick)
                stats = percentiles(times)
                ref_p50[b] = stats["p50_ms"]
                rows.append(_row(comp, "pytorch", "fp32", b, stats, ref_p50[b], None, False))
            del tsess
        for a in [a for a in arts if a.component == comp]:
            if backend_module(a.backend).available() is not None:
                log(f"skipping {a.backend}: {backend_module(a.backend).available()}")
                continue
            t = time.perf_counter()
            sess = open_session(bundle, a, cfg.threads)
            load_ms = (time.perf_counter() - t) * 1000
            for b in cfg.batches:
                feeds = inputs.feeds(comp, b)
                out = sess.run(feeds)[out_name]
                fid = compare(ref_out[b], out) if b in ref_out else None
                if progress:
                    progress.update(task, description=f"{comp} {a.backend}/{a.precision} b{b}")
                times = time_session(lambda: sess.run(feeds), cfg.runs, cfg.warmup, tick)
                row = _row(comp, a.backend, a.precision, b, percentiles(times), ref_p50.get(b), fid, default == (a.backend, a.precision))
                row["load_ms"] = round(load_ms, 1)
                row["gate_passed"] = a.passed
                rows.append(row)
            del sess
    if cfg.record:
        record_latency(bundle, rows, log)
        bundle = Bundle.open(bundle.root)
    try:
        default = select_variant(bundle)
    except MMDeployError:
        default = None
    for r in rows:
        r.pop("default", None)
        if default == (r["backend"], r["precision"]):
            r["default"] = True
    accuracy = task_accuracy(bundle, arts, inputs, data, ref, cfg.threads, log) if data.labels else []
    order = {c: i for i, c in enumerate(comps)}
    rows.sort(key=lambda r: (order[r["component"]], r["batch"], r["backend"] != "pytorch"))
    return {
        "model": bundle.name,
        "bundle": str(bundle.root),
        "family": bundle.family,
        "env": environment(cfg.threads),
        "config": {"runs": cfg.runs, "warmup": cfg.warmup, "batches": cfg.batches, "data": data.name},
        "default_variant": "/".join(default) if default else None,
        "results": rows,
        "accuracy": accuracy,
    }


def record_latency(bundle: Bundle, rows: list[dict[str, Any]], log) -> None:
    """Store summed batch-1 p50 per complete variant under this machine's key in the manifest."""
    from ..runtimes.bundle import BundleWriter
    from ..runtimes.select import machine_key

    comps = set(bundle.components)
    per: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["batch"] == 1 and r["backend"] != "pytorch":
            per.setdefault(f"{r['backend']}/{r['precision']}", {})[r["component"]] = r["p50_ms"]
    table = {k: round(sum(v.values()), 3) for k, v in per.items() if set(v) == comps}
    if not table:
        return
    try:
        with BundleWriter(bundle.root, base=bundle) as w:
            w.manifest.setdefault("measured", {}).setdefault(machine_key(), {}).update(table)
    except OSError as exc:
        log(f"could not record measurements in {bundle.root} ({exc}); load() keeps its static preference")


def task_accuracy(bundle, arts, inputs: Inputs, data: DataSet, ref, threads, log) -> list[dict[str, Any]]:
    """Zero-shot top-1 per (backend, precision) that has both CLIP towers, and for PyTorch."""
    if bundle.family != "clip" or not data.class_names:
        return []
    from .accuracy import zero_shot_top1

    out = []
    if ref is not None:
        from ..exporter.reference import TorchSession

        v = TorchSession(ref.module("vision"), ref.input_names("vision"), ["image_embeds"], threads)
        t = TorchSession(ref.module("text"), ref.input_names("text"), ["text_embeds"], threads)
        acc = zero_shot_top1(lambda f: v.run(f)["image_embeds"], lambda f: t.run(f)["text_embeds"], inputs, data)
        out.append({"backend": "pytorch", "precision": "fp32", **acc})
    for backend, precision in sorted({(a.backend, a.precision) for a in arts}):
        pair = {a.component: a for a in bundle.find(backend=backend, precision=precision)}
        if set(pair) != {"vision", "text"} or backend_module(backend).available() is not None:
            continue
        v = open_session(bundle, pair["vision"], threads)
        t = open_session(bundle, pair["text"], threads)
        acc = zero_shot_top1(lambda f: v.run(f)["image_embeds"], lambda f: t.run(f)["text_embeds"], inputs, data)
        out.append({"backend": backend, "precision": precision, **acc})
    for a in out:
        log(f"{a['task']} {a['backend']}/{a['precision']}: {a['value']:.2%} of {a['n']}")
    return out


def _row(comp, backend, precision, batch, stats, ref_p50, fid, is_default) -> dict[str, Any]:
    row = {
        "component": comp,
        "backend": backend,
        "precision": precision,
        "batch": batch,
        **{k: round(v, 3) for k, v in stats.items()},
        "items_per_s": round(batch * 1000.0 / stats["p50_ms"], 2),
        "speedup_vs_pytorch": round(ref_p50 / stats["p50_ms"], 3) if ref_p50 else None,
        "cosine_vs_pytorch": round(fid["cosine"], 6) if fid else (1.0 if backend == "pytorch" else None),
        "max_abs_diff": float(f"{fid['max_abs_diff']:.3g}") if fid else (0.0 if backend == "pytorch" else None),
    }
    if is_default:
        row["default"] = True
    return row
