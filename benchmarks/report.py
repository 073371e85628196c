"""bench's report step: the report (DESIGN.md's JSON schema) assembled from what was measured,
batch-1 latencies recorded in the manifest (so load() picks the fastest variant here), rich
tables on the terminal (the plan, latency, accuracy, generation), JSON and a PNG plot."""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.env import environment
from ..runtimes.bundle import Bundle

if TYPE_CHECKING:
    from .measure import Measured
    from .plan import BenchConfig, BenchPlan


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def busy_note(report: dict[str, Any]) -> str:
    """The table title's warning when the machine was busy while the report was measured."""
    load = report.get("env", {}).get("machine_load") or {}
    return f"\nBUSY MACHINE ({load['why']}): timings unreliable" if load.get("busy") else ""


def roofline_note(report: dict[str, Any]) -> str:
    """The work per item each GMAC/s figure divides by (the same for every variant of a component)."""
    per: dict[str, float] = {}
    for r in report["results"]:
        if r.get("gmacs") is not None and r["component"] not in per:
            per[r["component"]] = r["gmacs"] / r["batch"]
    if not per:
        return ""
    ceil = report["env"].get("ceilings")
    return (
        "\nGMAC/s = multiply-accumulates of the graph's MatMul/Gemm/Conv per second reached; GMACs per item: "
        + ", ".join(f"{c} {v:.3g}" for c, v in per.items())
        + (
            f"; ceiling here ({ceil['probe']}): fp32 {ceil['fp32_gmacs_per_s']:.0f}, int8 {ceil['int8_gmacs_per_s']:.0f}"
            if ceil
            else ""
        )
    )


def table(report: dict[str, Any]):
    from rich.table import Table

    cpu = report["env"]["cpu"]
    t = Table(
        title=f"{report['model']} on {cpu['model']} ({', '.join(cpu['isa']) or 'no AVX-512'}), "
        f"{report['env']['threads'] or 'all'} threads{busy_note(report)}",
        caption="* default variant (passed its gate, preferred here)   speedup = PyTorch p50 / variant p50, same run"
        + roofline_note(report),
    )
    distilled = any("speedup_vs_teacher" in r for r in report["results"])
    cols = [
        "component",
        "backend",
        "precision",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "items/s",
        "GMAC/s",
        "speedup",
        "cosine",
        "max|diff|",
    ]
    if distilled:  # a student's bundle: its teacher's PyTorch speed and embedding agreement too
        cols += ["vs teacher", "cos teacher"]
    for col in cols:
        t.add_column(col, justify="right" if col not in ("component", "backend", "precision") else "left")
    last = None
    for r in report["results"]:
        if last is not None and (r["component"], r["batch"]) != last:
            t.add_section()
        last = (r["component"], r["batch"])
        star = "*" if r.get("default") else ""
        cells = [
            r["component"],
            r["backend"] + star,
            r["precision"],
            str(r["batch"]),
            _fmt(r["p50_ms"], ".2f"),
            _fmt(r["p90_ms"], ".2f"),
            _fmt(r["p99_ms"], ".2f"),
            _fmt(r["items_per_s"], ".1f"),
            _fmt(r.get("gmacs_per_s"), ".0f"),
            _fmt(r["speedup_vs_pytorch"], ".2f") + ("x" if r["speedup_vs_pytorch"] else ""),
            _fmt(r["cosine_vs_pytorch"], ".6f"),
            _fmt(r["max_abs_diff"], ".2e"),
        ]
        if distilled:
            vt = r.get("speedup_vs_teacher")
            cells += [_fmt(vt, ".2f") + ("x" if vt else ""), _fmt(r.get("cosine_vs_teacher"), ".4f")]
        t.add_row(*cells)
    return t


def accuracy_table(report: dict[str, Any]):
    from rich.table import Table

    acc = report.get("accuracy") or []
    if not acc:
        return None
    # references per task: a bundle can report several (caption exact match and BLEU-4)
    ref = {a["task"]: a["value"] for a in acc if a["backend"] == "pytorch"}
    teacher = {a["task"]: a["value"] for a in acc if a["backend"] == "teacher"}
    t = Table(title=f"task accuracy on {report['config']['data']}")
    cols = ("backend", "precision", "task", "n", "value", "vs PyTorch") + (("kept of teacher",) if teacher else ())
    for col in cols:
        t.add_column(col, justify="right" if col in ("n", "value", "vs PyTorch", "kept of teacher") else "left")
    for a in acc:
        if "Spearman" in a["task"]:  # a rank correlation, already relative to PyTorch: no delta
            value, delta = f"{a['value']:.4f} (vs grades {a['vs_grades']:.3f})", "-"
        else:
            value = f"{a['value']:.2%}"
            r = ref.get(a["task"])
            delta = "-" if r is None or a["backend"] in ("pytorch", "teacher") else f"{(a['value'] - r) * 100:+.1f} pt"
        cells = [a["backend"], a["precision"], a["task"], str(a["n"]), value, delta]
        if teacher:
            tv = teacher.get(a["task"])
            cells.append("-" if a["backend"] == "teacher" or not tv else f"{a['value'] / tv:.1%}")
        t.add_row(*cells)
    return t


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)
    except OSError as exc:
        from ..common.diskspace import resource_error

        tmp.unlink(missing_ok=True)  # nothing half-written is left
        raise resource_error(exc, path.parent, f"writing {path}") from None


def plot(report: dict[str, Any], path: str | os.PathLike) -> None:
    """p50 latency and speedup per variant, one group per component@batch."""
    from ..errors import require

    matplotlib = require("matplotlib", "export")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    groups = sorted({(r["component"], r["batch"]) for r in rows}, key=lambda g: (g[0], g[1]))
    variants = list(dict.fromkeys(f"{r['backend']}/{r['precision']}" for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(groups) + 4), 4.5))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs, lat, spd = [], [], []
        for gi, g in enumerate(groups):
            r = next(
                (r for r in rows if (r["component"], r["batch"]) == g and f"{r['backend']}/{r['precision']}" == v), None
            )
            if r is None:
                continue
            xs.append(gi + i * width)
            lat.append(r["p50_ms"] / r["batch"])
            spd.append(r["speedup_vs_pytorch"] or 0)
        axes[0].bar(xs, lat, width, label=v)
        axes[1].bar(xs, spd, width, label=v)
    for ax, title in zip(
        axes, ("p50 latency per item (ms, lower is better)", "speedup vs PyTorch eager (higher is better)")
    ):
        ax.set_xticks([gi + width * (len(variants) - 1) / 2 for gi in range(len(groups))])
        ax.set_xticklabels([f"{c}\nbatch {b}" for c, b in groups])
        ax.set_title(title, fontsize=10)
    axes[1].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    cpu = report["env"]["cpu"]["model"]
    fig.suptitle(f"{report['model']} — {cpu}, {report['env']['threads'] or 'all'} threads", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def bench_report(plan: BenchPlan, measured: Measured, cfg: BenchConfig, log) -> dict[str, Any]:
    """The report of a measured plan; with ``cfg.record``, its batch-1 latencies recorded first
    (an encoder bundle's default variant is then asked again: the recording can change it)."""
    from .plan import ENCODERS, default_variant

    bundle, rows, default = plan.bundle, measured.rows, plan.default
    encoders = plan.kind == ENCODERS
    if cfg.record:
        (record_latency if encoders else record_generate)(bundle, rows, log)
    if encoders:
        default = default_variant(Bundle.open(bundle.root) if cfg.record else bundle)
        for r in rows:
            r.pop("default", None)
            if default == (r["backend"], r["precision"]):
                r["default"] = True
    order = {c: i for i, c in enumerate(measured.tasks)}
    # references first in each (task, batch): the teacher, then PyTorch
    rows.sort(key=lambda r: (order[r["component"]], r["batch"], r["backend"] != "teacher", r["backend"] != "pytorch"))
    env = environment(cfg.threads)
    config: dict[str, Any] = {"runs": cfg.runs, "warmup": cfg.warmup, "batches": cfg.batches, "data": measured.data}
    if encoders:
        env.update({"ceilings": measured.ceilings} if measured.ceilings else {})
        config["interleaved"] = cfg.interleave
    else:
        config["generate"] = measured.generate
    return {
        "model": bundle.name,
        "bundle": str(bundle.root),
        "family": bundle.family,
        "env": env,
        "config": config,
        "default_variant": "/".join(default) if default else None,
        "results": rows,
        "accuracy": measured.accuracy,
    }


def plan_table(plan: BenchPlan):
    """What a bench of this plan would run (``bench --plan``): one row per task, runner and batch."""
    from rich.table import Table

    ran = sum(r.skip is None for r in plan.rows)
    t = Table(
        title=f"bench plan: {plan.bundle.name} ({plan.bundle.family}, {plan.kind})",
        caption=f"data: {plan.data or 'one real photo'}; {ran} of {len(plan.rows)} rows run here; * default variant"
        + "".join(f"\n{n}" for n in plan.notes),
    )
    for col in ("task", "runner", "precision", "batch", "runs here"):
        t.add_column(col, justify="right" if col == "batch" else "left")
    for r in plan.rows:
        star = "*" if plan.default == (r.runner, r.precision) else ""
        t.add_row(r.task, r.runner + star, r.precision, str(r.batch), r.skip or "yes")
    return t


# the machine load of the bench in progress: latencies of a busy run never choose the default variant
_LOAD: ContextVar = ContextVar("bench_machine_load", default=None)


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


def record_generate(bundle: Bundle, rows: list[dict[str, Any]], log) -> None:
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
