"""bench: every variant of a bundle against the PyTorch reference, same inputs, one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..common.capabilities import Capability
from ..common.datasets import DataSet, open_dataset
from ..common.env import environment
from ..common.fidelity import compare
from ..common.timing import alternating, significant
from ..errors import InputError, MMDeployError
from ..runtimes.backends import get_backend
from ..runtimes.bundle import Bundle
from ..runtimes.feeds import BundleFeeds, component_kind
from ..runtimes.pipelines import pipeline_class
from ..runtimes.select import open_session, select_variant


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


def default_data(bundle: Bundle) -> DataSet:
    """Real sentences for text-only bundles; real photos when scikit-image is installed, else shapes."""
    if "images" not in {component_kind(bundle, c) for c in bundle.components}:
        return open_dataset("sentences")
    try:
        return open_dataset("photos")
    except MMDeployError:
        return open_dataset("shapes")


def pytorch_reference(bundle: Bundle, log: Callable[[str], None]):
    """The source checkpoint's family exporter (holds the torch modules), or None with a reason."""
    return _reference_from_source(bundle.manifest.get("source", {}), log)


def teacher_reference(bundle: Bundle, log: Callable[[str], None]):
    """For a distilled student's bundle: the teacher's family exporter, or None."""
    teacher = bundle.manifest.get("source", {}).get("distilled_from")
    if not teacher:
        return None
    ref = _reference_from_source(teacher, lambda m: log(m.replace("PyTorch reference", "teacher reference")))
    if ref is not None:
        log(f"teacher: {teacher.get('registry') or teacher.get('path')} (PyTorch rows marked 'teacher')")
    return ref


def _reference_from_source(src: dict, log: Callable[[str], None]):
    try:
        from ..exporter.checkpoint import resolve, state_sha256
        from ..exporter.families import family_exporter
    except MMDeployError as exc:  # torch / transformers not installed
        log(f"no PyTorch reference: {exc}")
        return None
    try:
        if src.get("random_weights"):
            ckpt = resolve(src["registry"], random_weights=True)
            if state_sha256(ckpt.model) != src.get("weights_sha256"):
                log("no PyTorch reference: the random-weights twin rebuilt here differs from the exported one")
                return None
        else:  # the recorded folder, else the registry name (a bundle copied to another machine)
            path = src.get("path")
            ckpt = resolve(path if path and Path(path).is_dir() else (src.get("registry") or path))
        return family_exporter(ckpt)
    except MMDeployError as exc:
        log(f"no PyTorch reference: {exc}")
        return None


# the machine load of the bench in progress: latencies of a busy run never choose the default variant
_LOAD: ContextVar = ContextVar("bench_machine_load", default=None)


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


def add_roofline(bundle: Bundle, rows: list[dict[str, Any]], inputs: BundleFeeds, threads: int | None) -> dict | None:
    """Each row's work per call (GMACs at its shapes), the MB of weights it reads, and the GMAC/s it
    reached: how far from the hardware a variant is, beside how it compares with PyTorch. Returns
    the ceilings measured here (roofline.ceilings) the GMAC/s figures compare against."""
    from .roofline import call_cost, ceilings

    try:
        import onnx  # noqa: F401 - the export extra; a runtime-only install benches without the GMAC/s column
    except ImportError:
        return None
    files = {(a.component, a.backend, a.precision): [bundle.path(f) for f in a.files] for a in bundle.artifacts}
    feeds: dict[tuple[str, int], dict[str, np.ndarray]] = {}  # built once per (component, batch): only shapes are read
    for r in rows:
        comp = bundle.components[r["component"]]
        fp32 = [bundle.path(comp["onnx"])] + [p for p in [bundle.path(comp["onnx"] + ".data")] if p.is_file()]
        key = (r["component"], r["batch"])
        if key not in feeds:
            feeds[key] = inputs.feeds(*key)
        cost = call_cost(
            bundle.path(comp["onnx"]), feeds[key], files.get((r["component"], r["backend"], r["precision"]), fp32)
        )
        # from the row's own (rounded) figures, to 4 significant digits: the relation holds on any machine
        r.update(cost)
        r["gmacs_per_s"] = significant(r["gmacs"] * 1000 / r["p50_ms"]) if r["p50_ms"] else None
    return ceilings(threads)


def _interleaved_times(
    bundle: Bundle, comp: str, out_name: str, refs: dict[str, Any], arts, inputs: BundleFeeds, cfg: BenchConfig, tick
) -> tuple[dict[tuple[str, int], list[float]], dict[str, tuple[Any, float]]]:
    """({(label, batch): times}, {label: (session, load ms)}) with every runner's calls alternating:
    run r of PyTorch, then run r of each variant, so a burst of other load lands on all of them
    alike. ORT sessions do not spin between calls here (their idle threads would take the cores
    the next runner needs). The sessions are handed back for the outputs and fidelity."""
    from ..exporter.reference import TorchSession

    opened: dict[str, tuple[Any, float]] = {}
    for label, fam in refs.items():
        if fam is not None:
            opened[label] = TorchSession(fam.module(comp), fam.input_names(comp), [out_name], cfg.threads), 0.0
    for a in arts:
        if get_backend(a.backend).available() is None:
            t = time.perf_counter()
            sess = open_session(bundle, a, cfg.threads, options={"spin": False} if a.backend == "onnxruntime" else None)
            opened[f"{a.backend}/{a.precision}"] = sess, (time.perf_counter() - t) * 1000
    out: dict[tuple[str, int], list[float]] = {}
    for b in cfg.batches:
        feeds = inputs.feeds(comp, b)
        times = alternating({k: partial(r.run, feeds) for k, (r, _) in opened.items()}, cfg.runs, cfg.warmup, tick)
        out.update({(k, b): v for k, v in times.items()})
    return out, opened


def _time_torch(
    fam,
    name: str,
    comp: str,
    out_name: str,
    inputs: BundleFeeds,
    cfg: BenchConfig,
    progress,
    task,
    tick,
    pre: dict | None = None,
    opened: dict | None = None,
):
    """A PyTorch reference (`fam`, or None) on every batch: ({batch: output}, {batch: latency stats});
    with --interleave its times and its session come from _interleaved_times."""
    outs: dict[int, np.ndarray] = {}
    stats: dict[int, dict[str, float]] = {}
    if fam is None:
        return outs, stats
    from ..exporter.reference import TorchSession

    if opened and name in opened:
        tsess = opened.pop(name)[0]
    else:
        tsess = TorchSession(fam.module(comp), fam.input_names(comp), [out_name], cfg.threads)
    for b in cfg.batches:
        feeds = inputs.feeds(comp, b)
        outs[b] = tsess.run(feeds)[out_name]
        if progress:
            progress.update(task, description=f"{comp} {name} b{b}")
        stats[b] = percentiles(
            pre[(name, b)] if pre else time_session(lambda: tsess.run(feeds), cfg.runs, cfg.warmup, tick)
        )
    return outs, stats


def write_measured(bundle: Bundle, table: dict[str, float], log) -> None:
    """Merge {variant: ms} into the manifest under this machine's key (load() ranks by it)."""
    from ..errors import BundleError, ResourceError
    from ..runtimes.select import record_measured

    if not table:
        return
    load = _LOAD.get()
    state = load.so_far() if load is not None else {}
    busy = state["why"] if state.get("busy") else None
    try:
        record_measured(bundle, table, busy=busy)
    except (OSError, BundleError, ResourceError) as exc:  # read-only, or the folder holds files of the user's own
        log(f"could not record measurements in {bundle.root} ({exc}); load() keeps its static preference")
        return
    if busy:
        log(
            f"busy machine ({busy}): latencies recorded in {bundle.root} as measured_busy, not used to "
            "choose the default variant; bench again on a quiet machine"
        )


def record_latency(bundle: Bundle, rows: list[dict[str, Any]], log) -> None:
    """Store summed batch-1 p50 per complete variant under this machine's key in the manifest."""
    comps = set(bundle.components)
    per: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["batch"] == 1 and r["backend"] != "pytorch":
            per.setdefault(f"{r['backend']}/{r['precision']}", {})[r["component"]] = r["p50_ms"]
    table = {k: round(sum(v.values()), 3) for k, v in per.items() if set(v) == comps}
    write_measured(bundle, table, log)


def task_accuracy(
    bundle, arts, inputs: BundleFeeds, data: DataSet, ref, threads, log, teacher=None
) -> list[dict[str, Any]]:
    """Zero-shot top-1 per (backend, precision) that has both towers of a dual encoder, for PyTorch, and for the teacher."""
    if pipeline_class(bundle.family).task != "zero-shot" or not data.class_names:
        return []
    img_out, txt_out = (bundle.components[c]["outputs"][0]["name"] for c in ("vision", "text"))
    from .accuracy import zero_shot_top1

    out = []
    for name, r in (("teacher", teacher), ("pytorch", ref)):
        if r is None:
            continue
        from ..exporter.reference import TorchSession

        v = TorchSession(r.module("vision"), r.input_names("vision"), [img_out], threads)
        t = TorchSession(r.module("text"), r.input_names("text"), [txt_out], threads)
        acc = zero_shot_top1(lambda f: v.run(f)[img_out], lambda f: t.run(f)[txt_out], inputs, data)
        out.append({"backend": name, "precision": "fp32", **acc})
    for backend, precision in sorted({(a.backend, a.precision) for a in arts}):
        pair = {a.component: a for a in bundle.find(backend=backend, precision=precision)}
        if set(pair) != {"vision", "text"} or get_backend(backend).available() is not None:
            continue
        v = open_session(bundle, pair["vision"], threads)
        t = open_session(bundle, pair["text"], threads)
        acc = zero_shot_top1(lambda f: v.run(f)[img_out], lambda f: t.run(f)[txt_out], inputs, data)
        out.append({"backend": backend, "precision": precision, **acc})
    for a in out:
        log(f"{a['task']} {a['backend']}/{a['precision']}: {a['value']:.2%} of {a['n']}")
    return out


def pair_accuracy(bundle, arts, inputs: BundleFeeds, ref, threads, log) -> list[dict[str, Any]]:
    """Text embeddings: how each variant ranks the graded sentence pairs, vs PyTorch (and the grades)."""
    from .accuracy import pair_cosines, pair_ranking

    out, ref_cos = [], None
    if ref is not None:
        from ..exporter.reference import TorchSession

        t = TorchSession(ref.module("text"), ref.input_names("text"), ["text_embeds"], threads)
        ref_cos = pair_cosines(lambda f: t.run(f)["text_embeds"], inputs)
        out.append({"backend": "pytorch", "precision": "fp32", **pair_ranking(ref_cos, None)})
    for a in arts:
        if a.component != "text" or get_backend(a.backend).available() is not None:
            continue
        sess = open_session(bundle, a, threads)
        cos = pair_cosines(lambda f: sess.run(f)["text_embeds"], inputs)
        out.append({"backend": a.backend, "precision": a.precision, **pair_ranking(cos, ref_cos)})
    for r in out:
        log(f"{r['task']} {r['backend']}/{r['precision']}: {r['value']:.4f} (vs grades {r['vs_grades']:.4f})")
    return out


def _row(comp, backend, precision, batch, stats, ref_p50, fid, is_default) -> dict[str, Any]:
    row = {
        "component": comp,
        "backend": backend,
        "precision": precision,
        "batch": batch,
        **{k: round(v, 3) for k, v in stats.items()},
        "items_per_s": significant(batch * 1000.0 / stats["p50_ms"]),
        "speedup_vs_pytorch": significant(ref_p50 / stats["p50_ms"]) if ref_p50 else None,
        "cosine_vs_pytorch": round(fid["cosine"], 6) if fid else (1.0 if backend == "pytorch" else None),
        "max_abs_diff": float(f"{fid['max_abs_diff']:.3g}") if fid else (0.0 if backend == "pytorch" else None),
    }
    if is_default:
        row["default"] = True
    return row


# -- captioning bundles ---------------------------------------------------------------------


def corpus_bleu(hyps: list[str], refs: list[str], n: int = 4) -> float:
    """Corpus BLEU-n (uniform weights, brevity penalty, whitespace tokens, one reference each)."""
    import math
    from collections import Counter

    match, total = [0] * n, [0] * n
    hl = rl = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        hl, rl = hl + len(h), rl + len(r)
        for k in range(1, n + 1):
            hc = Counter(tuple(h[i : i + k]) for i in range(len(h) - k + 1))
            rc = Counter(tuple(r[i : i + k]) for i in range(len(r) - k + 1))
            match[k - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[k - 1] += max(len(h) - k + 1, 0)
    if min(match) == 0 or hl == 0:
        return 0.0
    logp = sum(math.log(m / t) for m, t in zip(match, total)) / n
    bp = 1.0 if hl > rl else math.exp(1 - rl / hl)
    return bp * math.exp(logp)


def _new_tokens(ids_list, prompt_len: int, eos: list[int]) -> int:
    n = 0
    for ids in ids_list:
        gen = list(ids[prompt_len:])
        for k, t in enumerate(gen):
            if t in eos:
                gen = gen[: k + 1]
                break
        n += len(gen)
    return n


def caption_bench(bundle: Bundle, arts, cfg: BenchConfig, data: DataSet, default, log, progress) -> dict[str, Any]:
    """Rows per variant and batch: `encoder` (pixels -> cross / image K/V), `decoder` (one
    mid-caption step: the one that takes the 8th generated token; with the bytes it reads and
    the GB/s that achieves), `generate` (whole captions: ms per caption, tokens/s, speedup vs PyTorch
    ``generate`` with the same settings, tokens_match_pytorch). With labelled captions
    (``--data shapes``): exact match and BLEU-4 per variant and for PyTorch."""
    ref = pytorch_reference(bundle, log) if cfg.pytorch else None
    variants = sorted(
        {
            (a.backend, a.precision)
            for a in arts
            if len(bundle.find(backend=a.backend, precision=a.precision)) >= len(bundle.components)
        }
    )
    variants = [v for v in variants if get_backend(v[0]).available() is None]
    gen_runs, gen_warm = max(1, min(cfg.runs, 10)), min(cfg.warmup, 1)
    requests: dict[int, Any] = {}
    rows: list[dict[str, Any]] = []
    ref_p50: dict[tuple[str, int], float] = {}
    ref_out: dict[tuple[str, int], Any] = {}
    n_new = cfg.max_new_tokens

    pipes = {}
    for v in variants:
        t = time.perf_counter()
        pipes[v] = pipeline_class(bundle.family)(bundle, v[0], v[1], threads=cfg.threads)
        pipes[v].load_ms = (time.perf_counter() - t) * 1000
    base = pipes[variants[0]] if variants else None
    if base is None:
        raise InputError(f"{bundle.root}: no complete caption variant runs here")

    def request(b: int):  # the pipeline's own bench input (pixels; VQA: pixels and a question)
        if b not in requests:
            requests[b] = base.bench_request(data, b)
        return requests[b]

    def decoder_weight_bytes(backend: str, precision: str) -> int:
        """Weight bytes a decoder step reads (parses the graph: once per variant)."""
        a = bundle.find("decoder", backend, precision)[0]
        total = sum(bundle.manifest["files"][f]["bytes"] for f in a.files if not f.endswith(".xml"))
        return total - gather_only_bytes(bundle.path(a.path)) if a.path.endswith(".onnx") else total

    feeds_of = {b: base.bench_feeds(request(b)) for b in cfg.batches}  # graph -> feeds; the decoder step last
    graphs = list(feeds_of[cfg.batches[0]])
    steps_total = (len(variants) + (ref is not None)) * len(cfg.batches) * (len(graphs) * cfg.runs + gen_runs)
    task = progress.add_task("bench", total=steps_total) if progress else None
    tick = (lambda: progress.advance(task)) if progress else (lambda: None)
    kw = {"max_new_tokens": n_new, "num_beams": cfg.num_beams}
    if ref is not None:
        from ..exporter.reference import TorchSession

        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        sessions = {
            c: TorchSession(ref.module(c), ref.input_names(c), ref.output_names(c), cfg.threads) for c in graphs
        }
        for b in cfg.batches:
            for c in graphs:
                feeds = feeds_of[b][c]
                ref_out[(c, b)] = sessions[c].run(feeds)
                st = percentiles(time_session(lambda: sessions[c].run(feeds), cfg.runs, cfg.warmup, tick))
                ref_p50[(c, b)] = st["p50_ms"]
                rows.append(_row(c, "pytorch", "fp32", b, st, st["p50_ms"], None, False))
            ids = ref.bench_generate(request(b), **kw)
            ref_out[("generate", b)] = ids
            st = percentiles(time_session(lambda: ref.bench_generate(request(b), **kw), gen_runs, gen_warm, tick))
            ref_p50[("generate", b)] = st["p50_ms"]
            rows.append(_gen_row("pytorch", "fp32", b, st, st["p50_ms"], ids, base, None))
    for v, pipe in pipes.items():
        backend, precision = v
        if progress:
            progress.update(task, description=f"{bundle.family} {backend}/{precision}")
        weight_bytes = decoder_weight_bytes(backend, precision)
        for b in cfg.batches:
            for c in graphs:
                sess, feeds = pipe.sessions[c], feeds_of[b][c]
                out = sess.run(feeds)
                fid = _worst(ref_out.get((c, b)), out)
                st = percentiles(time_session(lambda: sess.run(feeds), cfg.runs, cfg.warmup, tick))
                row = _row(c, backend, precision, b, st, ref_p50.get((c, b)), fid, default == v)
                if c == graphs[0]:
                    row["load_ms"] = round(pipe.load_ms, 1)
                if c == "decoder":
                    kv_bytes = sum(a.nbytes for k, a in feeds.items() if k.startswith(("past.", "cross.")))
                    moved = weight_bytes + kv_bytes
                    row.update(
                        past_length=int(feeds["past.0.key"].shape[2]),
                        bytes_per_step=int(moved),
                        GB_per_s=significant(moved / (st["p50_ms"] / 1000) / 1e9),
                    )
                rows.append(row)
            ids = pipe.bench_generate(request(b), **kw)
            st = percentiles(time_session(lambda: pipe.bench_generate(request(b), **kw), gen_runs, gen_warm, tick))
            rows.append(
                _gen_row(
                    backend,
                    precision,
                    b,
                    st,
                    ref_p50.get(("generate", b)),
                    ids,
                    pipe,
                    ref_out.get(("generate", b)),
                    default == v,
                )
            )
    # the pipeline's task picks the score and the labels it needs (reference captions / answers)
    score, labels = {"question-answering": (vqa_accuracy, data.qa)}.get(base.task, (caption_accuracy, data.captions))
    accuracy = score(pipes, ref, data, cfg, log) if labels else []
    if cfg.record:
        _record_generate(bundle, rows, log)
    order = {c: i for i, c in enumerate(graphs + ["generate"])}
    rows.sort(key=lambda r: (order[r["component"]], r["batch"], r["backend"] != "pytorch"))
    return {
        "model": bundle.name,
        "bundle": str(bundle.root),
        "family": bundle.family,
        "env": environment(cfg.threads),
        "config": {
            "runs": cfg.runs,
            "warmup": cfg.warmup,
            "batches": cfg.batches,
            "data": data.name,
            "generate": {"max_new_tokens": n_new, "num_beams": cfg.num_beams, "runs": gen_runs},
        },
        "default_variant": "/".join(default) if default else None,
        "results": rows,
        "accuracy": accuracy,
    }


def _worst(ref: dict | None, out: dict) -> dict | None:
    if ref is None:
        return None
    from ..common.fidelity import compare

    worst = None
    for k, r in ref.items():
        c = compare(r, out[k])
        if worst is None or c["cosine"] < worst["cosine"]:
            worst = {
                "cosine": c["cosine"],
                "max_abs_diff": max(c["max_abs_diff"], (worst or {}).get("max_abs_diff", 0.0)),
            }
        else:
            worst["max_abs_diff"] = max(worst["max_abs_diff"], c["max_abs_diff"])
    return worst


def _gen_row(backend, precision, b, stats, ref_p50, ids, pipe, ref_ids, is_default=False) -> dict[str, Any]:
    prompt = len(pipe.generation.start_ids)
    tokens = _new_tokens(ids, prompt, list(pipe.generation.eos_token_id))
    row = _row("generate", backend, precision, b, stats, ref_p50, None, is_default)
    row.update(
        ms_per_caption=round(stats["p50_ms"] / b, 2),
        new_tokens=tokens,
        tokens_per_s=significant(tokens / (stats["p50_ms"] / 1000)),
    )
    if backend == "pytorch":
        row["tokens_match_pytorch"] = True
    elif ref_ids is not None:
        row["tokens_match_pytorch"] = bool(
            len(ids) == len(ref_ids)
            and all(len(a) == len(r) and (np.asarray(a) == r).all() for a, r in zip(ids, ref_ids))
        )
    row["cosine_vs_pytorch"] = row["max_abs_diff"] = None  # tokens_match_pytorch says it for whole captions
    return row


def gather_only_bytes(onnx_path: Path) -> int:
    """Bytes of initializers that only Gather nodes read (embedding tables): a step reads one row of
    each, not the table. INT8 / int4 graphs keep an fp32 copy of the tied table for the lookup, and
    counting it would inflate the step's GB/s. 0 without the onnx package."""
    try:
        import onnx
    except ImportError:
        return 0
    g = onnx.load(str(onnx_path), load_external_data=False).graph
    users: dict[str, set[str]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, set()).add(n.op_type)

    def size(t) -> int:
        ext = {e.key: e.value for e in t.external_data}
        return int(ext["length"]) if "length" in ext else len(t.raw_data)

    return sum(size(t) for t in g.initializer if users.get(t.name) == {"Gather"})


def caption_accuracy(pipes, ref, data: DataSet, cfg: BenchConfig, log, limit: int = 200) -> list[dict[str, Any]]:
    """Exact match and corpus BLEU-4 of the captions vs the data set's reference captions."""
    images, refs = data.images[:limit], (data.captions or [])[:limit]
    out = []
    todo: list[tuple[str, str, Any]] = []
    if ref is not None:
        todo.append(("pytorch", "fp32", None))
    todo += [(b, p, pipe) for (b, p), pipe in pipes.items()]
    base = next(iter(pipes.values()))
    for backend, precision, pipe in todo:
        caps: list[str] = []
        for i in range(0, len(images), 50):
            px = base.pixel_values(images[i : i + 50])
            if pipe is None:
                ids = ref.torch_generate(px, max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams)
            else:
                ids = pipe.generate_ids(px, max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams)
            caps += [base.decode(x) for x in ids]
        exact = float(np.mean([c == r for c, r in zip(caps, refs)]))
        bleu = corpus_bleu(caps, refs)
        for task, value in (("caption exact match", exact), ("caption BLEU-4", bleu)):
            out.append({"backend": backend, "precision": precision, "task": task, "n": len(refs), "value": value})
        log(f"captions {backend}/{precision}: exact match {exact:.2%}, BLEU-4 {bleu:.3f} on {len(refs)}")
    return out


def vqa_accuracy(pipes, ref, data: DataSet, cfg: BenchConfig, log, limit: int = 600) -> list[dict[str, Any]]:
    """Exact answers (greedy or beam, as benched) vs the data set's reference answers."""
    qa = (data.qa or [])[:limit]
    out = []
    base = next(iter(pipes.values()))
    todo: list[tuple[str, str, Any]] = [("pytorch", "fp32", None)] if ref is not None else []
    todo += [(b, p, pipe) for (b, p), pipe in pipes.items()]
    images = [im for im, _, _ in qa]
    ids = [base.question_ids(q) for _, q, _ in qa]
    for backend, precision, pipe in todo:
        answers: list[str] = []
        for i in range(0, len(qa), 60):
            if pipe is None:
                px = base.pixel_values(images[i : i + 60])
                got = ref.torch_generate(
                    px, ids[i : i + 60], max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams
                )
            else:
                got = pipe.answer_ids(
                    images[i : i + 60],
                    [q for _, q, _ in qa[i : i + 60]],
                    max_new_tokens=cfg.max_new_tokens,
                    num_beams=cfg.num_beams,
                    batch_size=60,
                )
            answers += [base.decode(x) for x in got]
        exact = float(np.mean([a == r for a, (_, _, r) in zip(answers, qa)]))
        out.append(
            {"backend": backend, "precision": precision, "task": "vqa exact answer", "n": len(qa), "value": exact}
        )
        log(f"answers {backend}/{precision}: exact {exact:.2%} on {len(qa)} questions")
    return out


def _record_generate(bundle: Bundle, rows: list[dict[str, Any]], log) -> None:
    """Batch-1 generate p50 per variant under this machine's key: load() defaults to the fastest."""

    table = {
        f"{r['backend']}/{r['precision']}": r["p50_ms"]
        for r in rows
        if r["component"] == "generate" and r["batch"] == 1 and r["backend"] != "pytorch"
    }
    write_measured(bundle, table, log)


def caption_table(report: dict[str, Any]):
    """The caption-specific columns: decoder-step bandwidth and whole-caption generation."""
    from rich.table import Table

    g = report["config"].get("generate", {})
    from .report import busy_note

    t = Table(
        title=f"generation: {g.get('max_new_tokens')} new tokens, num_beams {g.get('num_beams')}{busy_note(report)}",
        caption="decoder GB/s = (decoder weights + KV read) / step p50; speedup = PyTorch generate p50 / ours",
    )
    for col in (
        "backend",
        "precision",
        "batch",
        "step ms",
        "step GB/s",
        "ms/caption",
        "tokens/s",
        "speedup",
        "tokens match",
    ):
        t.add_column(col, justify="left" if col in ("backend", "precision") else "right")
    steps = {(r["backend"], r["precision"], r["batch"]): r for r in report["results"] if r["component"] == "decoder"}
    for r in report["results"]:
        if r["component"] != "generate":
            continue
        s = steps.get((r["backend"], r["precision"], r["batch"]), {})
        sp = r.get("speedup_vs_pytorch")
        match = r.get("tokens_match_pytorch")
        t.add_row(
            r["backend"],
            r["precision"],
            str(r["batch"]),
            f"{s.get('p50_ms', float('nan')):.2f}",
            str(s.get("GB_per_s", "-")),
            f"{r['ms_per_caption']:.1f}",
            f"{r['tokens_per_s']:.1f}",
            f"{sp:.2f}x" if sp else "-",
            "-" if match is None else ("yes" if match else "NO"),
        )
    return t
