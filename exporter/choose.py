"""`--mode best`: INT8 recipes tried on this CPU, the fastest that passes its gate kept.

Which recipe is fastest differs per CPU kind and per tower, so it is measured, not assumed. For
each component every candidate (a recipe with its exclusions; on OpenVINO also the compute hint
for the ops left in float) is built, its gate measured on the held-out inputs like any variant,
and its batch-1 latency timed here, call by call alternating with the fp32 graph (the choice uses
that ratio, which survives drift on a shared machine). The fastest candidate that passes stays in
the bundle; the manifest records every candidate's figures, the machine and why it won.

Measured on the CLIP ViT-B/32 twin, vision b1, AMD EPYC (AVX-512 VNNI/BF16), 2 threads:
ORT dynamic 13.5 ms, of which 3.2 ms is the patch-embedding ConvInteger (float Conv: 0.8 ms):
dynamic with Conv float 11.4 ms; static Q/DQ 18.8 ms, a third of it the MLP down-projections the
default exclusions keep float (fp32 MatMul); OpenVINO NNCF INT8 15.2 ms with f32 compute for the
float ops, 10.9 ms with bf16 (fp32 ORT 32.5 ms, OpenVINO 27.1 ms); runtime hints (pinning, one
stream, denormals) moved it by under 3% and are not candidates.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..common.env import MachineLoad
from ..common.timing import alternating, runs_for
from ..errors import require
from .quantization import (
    DEFAULT_EXCLUDE,
    DYNAMIC_OPS,
    NNCF_PRESET_SMOOTH_QUANT,
    Built,
    Job,
    Recipe,
    matches,
    weight_nodes,
)
from .quantization.policies import policy_for

TIMING_SECONDS = 2.0  # per candidate: turns alternating with the fp32 graph
# calls per turn (after one untimed): one call a turn would put each session's calls beside the other's
# spinning threads (ORT spins after a call): B/32 dynamic INT8 timed 32 ms that way, 13.5 ms alone
TIMING_BLOCK = 10
TIMING_SETTLE = 3  # untimed calls before each turn's timed ones


@dataclass(frozen=True)
class Candidate:
    label: str
    mode: str  # static | dynamic
    exclude: tuple[str, ...] | None  # None: DEFAULT_EXCLUDE (the MLP down-projections float)
    hint: str | None = None  # OpenVINO INFERENCE_PRECISION_HINT for the ops left in float
    smooth_quant: float = -1.0  # NNCF SmoothQuant alpha for MatMul (-1: off, the INT8 default)

    def excluded(self) -> list[str]:
        return list(DEFAULT_EXCLUDE if self.exclude is None else self.exclude)


def candidates(backend: str, calibrated: bool, bf16: bool) -> list[Candidate]:
    """The recipes worth trying for (backend, int8); calibrated ones only with calibration data."""
    if backend == "onnxruntime":
        out = [Candidate("dynamic", "dynamic", ()), Candidate("dynamic, Conv float", "dynamic", ("Conv",))]
        if calibrated:
            out += [
                Candidate("static Q/DQ, MLP down-projections float", "static", None),
                Candidate("static Q/DQ, all", "static", ()),
            ]
        return out
    # INT8 on OpenVINO runs without SmoothQuant (quantization.NNCF_PRESET_SMOOTH_QUANT: measured); the
    # preset's alpha is tried beside it (B/32 text, all quantized: alpha 0.5 gave 0.9989, 0.95 0.9866)
    hints = ["f32", "bf16"] if bf16 else ["f32"]
    builds = [
        (None, -1.0, "MLP down-projections float"),
        ((), -1.0, "all"),
        ((), NNCF_PRESET_SMOOTH_QUANT, f"all, SmoothQuant {NNCF_PRESET_SMOOTH_QUANT}"),
    ]
    return [Candidate(f"NNCF, {what}, {h} compute", "static", ex, h, sq) for ex, sq, what in builds for h in hints]


def pick(rows: list[dict[str, Any]], metric: str = "cosine_mean") -> int | None:
    """Index of the fastest row (by its ratio to fp32 timed beside it) that passed; None if none did.
    Accuracy is traded only for speed: where no passing row beats fp32 (INT8 on a CPU without VNNI
    measured 1.2-3.5x fp32's time), the most accurate passing row."""
    passing = [i for i, r in enumerate(rows) if r["passed"]]
    if not passing:
        return None
    faster = [i for i in passing if rows[i]["vs_fp32"] < 1.0]
    if faster:
        return min(faster, key=lambda i: rows[i]["vs_fp32"])
    return max(passing, key=lambda i: rows[i][metric])


def _groups(src: Path, cands: list[Candidate]) -> list[list[Candidate]]:
    """Candidates that build the same graph (same mode, same quantized nodes) share one build:
    'Conv float' on a graph without Conv, or default exclusions that match nothing, are dropped."""
    onnx = require("onnx", "export")
    nodes = weight_nodes(onnx.load(str(src), load_external_data=False))
    out: dict[tuple, list[Candidate]] = {}
    for c in cands:
        names = frozenset(
            n.name for n in nodes if not matches(n, c.excluded()) and (c.mode != "dynamic" or n.op_type in DYNAMIC_OPS)
        )
        if names:
            group = out.setdefault((c.mode, names, c.smooth_quant), [])
            if all(g.hint != c.hint for g in group):
                group.append(c)
    return list(out.values())


def batch_one(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in feeds.items()}


def tournament(sessions: dict[str, Any], feeds: dict[str, np.ndarray]) -> tuple[dict[str, float], int]:
    """({name: median ms}, turns): every session on the same feeds, turn by turn (TIMING_BLOCK calls
    after TIMING_SETTLE untimed), about TIMING_SECONDS per session."""
    runners = {k: (lambda s=s: s.run(feeds)) for k, s in sessions.items()}
    turns = runs_for(runners, TIMING_SECONDS * len(runners), 3, 40, TIMING_BLOCK, TIMING_SETTLE)
    times = alternating(runners, turns, 2, block=TIMING_BLOCK, settle=TIMING_SETTLE)
    return {k: float(np.median(v)) for k, v in times.items()}, turns


def choose(
    job: Job,
    recipe: Callable[[str], Recipe],
    backend: str,
    metric: str,
    gate: float,
    feeds: dict[str, np.ndarray],
    open_session: Callable[..., Any],
    bf16: bool,
) -> Built:
    """Build, gate and time each candidate for job.component; return the winner's Built (its
    files in the stage) with every candidate's figures in its recipe under "chosen"."""
    from ..runtimes.select import machine_key

    cands = candidates(backend, job.calib is not None, bf16)
    keep = job.workdir / f"{job.component}.candidates"
    rows: list[dict[str, Any]] = []
    builds: list[tuple[Built, dict, dict, int]] = []  # per row: its build, runtime, parity, build group
    for g, group in enumerate(_groups(job.src, cands)):
        first = group[0]
        cfg = replace(
            job.cfg, mode=first.mode, exclude=first.excluded(), min_cosine=None, smooth_quant=first.smooth_quant
        )
        built = recipe(first.mode).build(replace(job, cfg=cfg))
        for f in built.files:  # a copy: the next build writes the same staged paths
            (keep / str(g) / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(job.w.stage_dir / f, keep / str(g) / f)
        for c in group:
            runtime = dict(built.runtime, **({"INFERENCE_PRECISION_HINT": c.hint} if c.hint else {}))
            par = job.fidelity(keep / str(g) / built.files[0], runtime, backend)
            rows.append(
                {
                    "candidate": c.label,
                    "recipe": recipe(c.mode).name,
                    "exclude": c.excluded(),
                    **({"compute_hint": c.hint} if c.hint else {}),
                    **({"smooth_quant": c.smooth_quant} if backend == "openvino" else {}),
                    metric: round(float(par[metric]), 6),
                    "passed": bool(par[metric] >= gate),
                }
            )
            builds.append((built, runtime, par, g))
    # every candidate and the fp32 graph timed in one tournament, turn by turn: drift on a shared
    # machine hits all alike (timed one after another, candidates 20% apart swapped places)
    gc.collect()  # sessions of the builds' calibration and checks: their thread pools go before timing
    sessions = {"fp32": open_session(job.src, {}, "onnxruntime")}
    for i, (built, runtime, _, g) in enumerate(builds):
        sessions[str(i)] = open_session(keep / str(g) / built.files[0], runtime, backend)
    with MachineLoad() as load:
        times, turns = tournament(sessions, batch_one(feeds))
    if load.result.get("busy"):
        job.log(f"warning: busy machine while timing ({load.result['why']}): the choice may not hold on a quiet one")
    del sessions
    for i, row in enumerate(rows):
        ms = times[str(i)]
        row.update(ms=round(ms, 3), fp32_ms=round(times["fp32"], 3), vs_fp32=round(ms / times["fp32"], 4))
        job.log(
            f"{job.component}: {row['candidate']}: {ms:.2f} ms ({row['vs_fp32']:.2f}x the fp32 graph's "
            f"{times['fp32']:.2f} ms), {metric} {row[metric]:.5f}{'' if row['passed'] else f' < {gate}: out'}"
        )
    won = pick(rows, metric)
    passed = won is not None
    if won is None:  # kept like any variant below its gate: reported, never chosen by default
        won = max(range(len(rows)), key=lambda i: rows[i][metric])
    built, runtime, par, g = builds[won]
    for f in built.files:  # the winner's files back in the stage
        shutil.copy2(keep / str(g) / f, job.w.stage_dir / f)
    shutil.rmtree(keep, ignore_errors=True)
    row = rows[won]
    recipe_info = dict(built.recipe, recipe=row["recipe"], exclude=row["exclude"])
    if row["recipe"] == "int8-dynamic":
        recipe_info["calibration"] = None  # data-free, even when --calib was given for the others
    if "compute_hint" in row:
        recipe_info["compute"] = f"int8, {row['compute_hint']} for the ops left in float"
    recipe_info["chosen"] = {
        "by": "--mode best",
        "winner": row["candidate"],
        "machine": machine_key(),
        "threads": job.cfg.threads,
        "timing": f"batch 1, median over {turns} turns of {TIMING_BLOCK} calls (after {TIMING_SETTLE} untimed), every candidate and the fp32 ONNX graph in turn",
        "gate": f"{metric} >= {gate}",
        "machine_load": load.result,
        "why": (
            f"none of {len(rows)} passed: the most accurate kept"
            if not passed
            else f"fastest of the {sum(r['passed'] for r in rows)} of {len(rows)} candidates that passed"
            if row["vs_fp32"] < 1.0
            else f"none of the {sum(r['passed'] for r in rows)} passing candidates ran faster than fp32 here: "
            "the most accurate kept"
        ),
        "candidates": rows,
    }
    job.log(
        f"{job.component}: chose {row['candidate']} ({row['ms']:.2f} ms, {row['vs_fp32']:.2f}x fp32's time)"
        + ("" if passed else f": no candidate passed {metric} >= {gate}")
    )
    return Built(files=built.files, runtime=runtime, recipe=recipe_info, parity=par)


def measure_variants(root: Path, threads: int | None, log: Callable[[str], None]) -> dict[str, float]:
    """Every complete variant of the bundle timed here at batch 1 (per component, all variants in
    one tournament), recorded under this machine's key: select_variant then defaults to the
    fastest that passed, as after `bench`."""
    from ..runtimes.bundle import Bundle
    from ..runtimes.select import open_session, record_measured, runs_here

    bundle = Bundle.open(root)
    comps = list(bundle.components)
    variants: dict[str, dict[str, Any]] = {}
    for a in bundle.artifacts:
        if runs_here(a):
            variants.setdefault(f"{a.backend}/{a.precision}", {})[a.component] = a
    variants = {k: v for k, v in variants.items() if set(v) == set(comps)}
    feeds = policy_for(bundle.family, str(root)).fidelity_feeds(bundle, comps, threads)
    total = dict.fromkeys(variants, 0.0)
    for comp in comps:
        times, _ = tournament(
            {k: open_session(bundle, v[comp], threads) for k, v in variants.items()}, batch_one(feeds[comp][0][0])
        )
        for k, ms in times.items():
            total[k] += ms
    table = {k: round(v, 3) for k, v in total.items()}
    record_measured(bundle, table)
    log(
        "batch-1 latency here (all components): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(table.items(), key=lambda kv: kv[1]))
    )
    return table
