"""bench's measuring step: runs a plan's rows and returns what it measured (Measured), printing nothing.

Timing loops (sequential, or interleaved run by run), the PyTorch and teacher references,
encoder rows (latency, speedup, fidelity, roofline) and generation rows (decoder step, whole
captions), then the task accuracy. Recording and tables are report.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..common.datasets import open_dataset
from ..common.fidelity import compare
from ..common.timing import alternating, significant
from ..errors import InputError, MMDeployError
from ..runtimes.backends import get_backend
from ..runtimes.bundle import Bundle
from ..runtimes.feeds import BundleFeeds
from ..runtimes.pipelines import pipeline_class
from ..runtimes.select import open_session
from .accuracy import caption_accuracy, pair_accuracy, task_accuracy, vqa_accuracy
from .plan import ENCODERS, GENERATION, BenchConfig, BenchPlan, complete_variants


@dataclass
class Measured:
    """What a plan's run measured: report rows, accuracy rows, and what the report says about them."""

    rows: list[dict[str, Any]]
    accuracy: list[dict[str, Any]]
    data: str  # the data set's name
    tasks: list[str]  # components (and ``generate``) in the order the report lists them
    ceilings: dict | None = None  # encoders: the GMAC/s this machine reaches (roofline)
    generate: dict | None = None  # generation: the settings of the generate rows


def measure(plan: BenchPlan, cfg: BenchConfig, log: Callable[[str], None], progress=None) -> Measured:
    """Run the plan's rows (encoder or generation bundles; chat_bench measures conversations)."""
    run = {ENCODERS: measure_encoders, GENERATION: measure_generation}[plan.kind]
    return run(plan, cfg, log, progress)


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


def pytorch_reference(bundle: Bundle, log: Callable[[str], None]):
    """The source checkpoint's family exporter (holds the torch modules), or None with a reason."""
    return _reference_from_source(bundle.source, log)


def teacher_reference(bundle: Bundle, log: Callable[[str], None]):
    """For a distilled student's bundle: the teacher's family exporter, or None."""
    teacher = bundle.source.get("distilled_from")
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


def measure_encoders(plan: BenchPlan, cfg: BenchConfig, log, progress) -> Measured:
    """Rows per component, runner and batch: latency percentiles, speedup and fidelity against
    PyTorch (and a distilled student's teacher), the roofline figures; then the task accuracy."""
    bundle, default, arts = plan.bundle, plan.default, plan.variants
    data = open_dataset(plan.data)
    inputs = BundleFeeds(bundle, data)
    ref = pytorch_reference(bundle, log) if cfg.pytorch else None
    teacher = teacher_reference(bundle, log) if plan.teacher else None

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
    if plan.task == "pair-similarity":
        accuracy = pair_accuracy(bundle, arts, inputs, ref, cfg.threads, log)
    else:
        accuracy = task_accuracy(bundle, arts, inputs, data, ref, cfg.threads, log, teacher) if data.labels else []
    return Measured(rows, accuracy, data.name, comps, ceilings=ceiling)


def measure_generation(plan: BenchPlan, cfg: BenchConfig, log, progress) -> Measured:
    """Rows per variant and batch: `encoder` (pixels -> cross / image K/V), `decoder` (one
    mid-caption step: the one that takes the 8th generated token; with the bytes it reads and
    the GB/s that achieves), `generate` (whole captions: ms per caption, tokens/s, speedup vs PyTorch
    ``generate`` with the same settings, tokens_match_pytorch). With labelled captions
    (``--data shapes``): exact match and BLEU-4 per variant and for PyTorch."""
    bundle, default, data = plan.bundle, plan.default, open_dataset(plan.data)
    ref = pytorch_reference(bundle, log) if cfg.pytorch else None
    planned = {(r.runner, r.precision) for r in plan.rows if r.task == "generate" and r.skip is None}
    variants = [v for v in complete_variants(bundle, plan.variants) if v in planned]
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
        total = bundle.file_bytes(f for f in a.files if not f.endswith(".xml"))
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
    gen = {"max_new_tokens": n_new, "num_beams": cfg.num_beams, "runs": gen_runs}
    return Measured(rows, accuracy, data.name, [*graphs, "generate"], generate=gen)


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
