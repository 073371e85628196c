"""bench: every variant of a bundle against the PyTorch reference, same inputs, one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..common.capabilities import Capability
from ..common.datasets import DataSet, open_dataset
from ..common.env import environment
from ..common.fidelity import compare
from ..errors import InputError, MMDeployError
from ..runtimes.backends import get_backend
from ..runtimes.bundle import Bundle
from ..runtimes.feeds import BundleFeeds, component_kind
from ..runtimes.pipelines import pipeline_class
from ..runtimes.select import open_session, select_variant
from .accuracy import pair_accuracy, task_accuracy
from .measure import (
    _interleaved_times,
    _row,
    _time_torch,
    add_roofline,
    caption_bench,
    gather_only_bytes,
    percentiles,
    pytorch_reference,
    teacher_reference,
    time_session,
)
from .plan import BenchConfig
from .report import _LOAD, caption_table, record_latency, write_measured

__all__ = ["BenchConfig", "bench", "caption_table", "gather_only_bytes", "write_measured"]


def default_data(bundle: Bundle) -> DataSet:
    """Real sentences for text-only bundles; real photos when scikit-image is installed, else shapes."""
    if "images" not in {component_kind(bundle, c) for c in bundle.components}:
        return open_dataset("sentences")
    try:
        return open_dataset("photos")
    except MMDeployError:
        return open_dataset("shapes")


def bench(path: str, cfg: BenchConfig, log: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
    """Every variant of a bundle against PyTorch, with what else ran meanwhile (env.machine_load):
    a busy machine is flagged in the report, the table title and the log."""
    from ..common.env import MachineLoad

    with MachineLoad() as load:
        token = _LOAD.set(load)
        try:
            report = _bench(path, cfg, log, progress)
        finally:
            _LOAD.reset(token)
    report["env"]["machine_load"] = load.result
    if load.result.get("busy"):
        log(f"warning: busy machine ({load.result['why']}): the timings and ratios of this run are unreliable")
    return report


def _bench(path: str, cfg: BenchConfig, log: Callable[[str], None], progress) -> dict[str, Any]:
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
    pipeline = pipeline_class(bundle.family, str(bundle.root))
    if cfg.interleave and (pipeline.generative or pipeline.can(Capability.CHAT)):
        log("--interleave applies to encoder bundles; this one is timed variant by variant")
    if pipeline.can(Capability.CHAT):  # conversations: TTFT, decode tokens/s, turn 2 with the cache
        from .chat_bench import chat_bench

        return chat_bench(bundle, arts, cfg, default, log, pytorch_reference(bundle, log) if cfg.pytorch else None)
    data = open_dataset(cfg.data) if cfg.data else default_data(bundle)
    if pipeline.generative:  # encoder, decoder step and whole-generation rows
        return caption_bench(bundle, arts, cfg, data, default, log, progress)
    inputs = BundleFeeds(bundle, data)
    ref = pytorch_reference(bundle, log) if cfg.pytorch else None
    teacher = teacher_reference(bundle, log) if cfg.pytorch else None

    comps = list(bundle.components)
    n_sessions = len(arts) + len(comps) * ((ref is not None) + (teacher is not None))
    task = progress.add_task("bench", total=n_sessions * len(cfg.batches) * cfg.runs) if progress else None
    tick = (lambda: progress.advance(task)) if progress else (lambda: None)

    rows: list[dict[str, Any]] = []
    for comp in comps:
        out_name = bundle.components[comp]["outputs"][0]["name"]
        pre, opened = (
            _interleaved_times(
                bundle,
                comp,
                out_name,
                {"pytorch": ref, "teacher": teacher},
                [a for a in arts if a.component == comp],
                inputs,
                cfg,
                tick,
            )
            if cfg.interleave
            else (None, {})
        )
        ref_out, ref_stats = _time_torch(ref, "pytorch", comp, out_name, inputs, cfg, progress, task, tick, pre, opened)
        ref_p50 = {b: st["p50_ms"] for b, st in ref_stats.items()}
        rows += [_row(comp, "pytorch", "fp32", b, st, ref_p50[b], None, False) for b, st in ref_stats.items()]
        teacher_out, teacher_stats = _time_torch(
            teacher, "teacher", comp, out_name, inputs, cfg, progress, task, tick, pre, opened
        )
        teacher_p50 = {b: st["p50_ms"] for b, st in teacher_stats.items()}
        for b, st in teacher_stats.items():  # a distilled student's bundle: its teacher beside it
            row = _row(comp, "teacher", "fp32", b, st, ref_p50.get(b), None, False)
            row["cosine_vs_pytorch"] = row["max_abs_diff"] = None
            rows.append(row)
            for r in rows:
                if r["component"] == comp and r["batch"] == b:
                    r["speedup_vs_teacher"] = round(teacher_p50[b] / r["p50_ms"], 3)
                    if r["backend"] == "pytorch":
                        r["cosine_vs_teacher"] = round(compare(teacher_out[b], ref_out[b])["cosine"], 6)
        for a in [a for a in arts if a.component == comp]:
            if get_backend(a.backend).available() is not None:
                log(f"skipping {a.backend}: {get_backend(a.backend).available()}")
                continue
            label = f"{a.backend}/{a.precision}"
            if label in opened:  # the session --interleave timed: its outputs and fidelity from it too
                sess, load_ms = opened.pop(label)
            else:
                t = time.perf_counter()
                sess = open_session(bundle, a, cfg.threads)
                load_ms = (time.perf_counter() - t) * 1000
            for b in cfg.batches:
                feeds = inputs.feeds(comp, b)
                out = sess.run(feeds)[out_name]
                fid = compare(ref_out[b], out) if b in ref_out else None
                if progress:
                    progress.update(task, description=f"{comp} {a.backend}/{a.precision} b{b}")
                times = (
                    pre[(label, b)]
                    if pre
                    else time_session(lambda s=sess, f=feeds: s.run(f), cfg.runs, cfg.warmup, tick)
                )
                row = _row(
                    comp,
                    a.backend,
                    a.precision,
                    b,
                    percentiles(times),
                    ref_p50.get(b),
                    fid,
                    default == (a.backend, a.precision),
                )
                row["load_ms"] = round(load_ms, 1)
                row["gate_passed"] = a.passed
                if b in teacher_p50:
                    row["speedup_vs_teacher"] = round(teacher_p50[b] / row["p50_ms"], 3)
                    row["cosine_vs_teacher"] = round(compare(teacher_out[b], out)["cosine"], 6)
                rows.append(row)
            del sess
    ceiling = add_roofline(bundle, rows, inputs, cfg.threads)
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
    if pipeline.task == "pair-similarity":
        accuracy = pair_accuracy(bundle, arts, inputs, ref, cfg.threads, log)
    else:
        accuracy = task_accuracy(bundle, arts, inputs, data, ref, cfg.threads, log, teacher) if data.labels else []
    order = {c: i for i, c in enumerate(comps)}
    rows.sort(
        key=lambda r: (
            order[r["component"]],
            r["batch"],
            r["backend"] not in ("teacher", "pytorch"),
            r["backend"] != "teacher",
        )
    )
    return {
        "model": bundle.name,
        "bundle": str(bundle.root),
        "family": bundle.family,
        "env": dict(environment(cfg.threads), **({"ceilings": ceiling} if ceiling else {})),
        "config": {
            "runs": cfg.runs,
            "warmup": cfg.warmup,
            "batches": cfg.batches,
            "data": data.name,
            "interleaved": cfg.interleave,
        },
        "default_variant": "/".join(default) if default else None,
        "results": rows,
        "accuracy": accuracy,
    }
