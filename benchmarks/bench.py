"""bench: every variant of a bundle against the PyTorch reference, same inputs, one process.

Three steps, each its own module: plan.py decides what runs (rows of task x runner x batch,
and what is skipped and why) without running anything; measure.py runs the plan's rows;
report.py records batch-1 latencies in the manifest and builds the report and its tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .measure import gather_only_bytes, measure, pytorch_reference
from .plan import CHAT, BenchConfig, BenchPlan, plan_bench
from .report import _LOAD, bench_report, caption_table, write_measured

__all__ = ["BenchConfig", "bench", "caption_table", "gather_only_bytes", "plan_bench", "write_measured"]


def bench(path: str, cfg: BenchConfig, log: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
    """Every variant of a bundle against PyTorch, with what else ran meanwhile (env.machine_load):
    a busy machine is flagged in the report, the table title and the log."""
    from ..common.env import MachineLoad

    plan = plan_bench(path, cfg)
    for note in plan.notes:
        log(note)
    with MachineLoad() as load:
        token = _LOAD.set(load)  # a busy run's latencies never choose the default variant
        try:
            report = run_plan(plan, cfg, log, progress)
        finally:
            _LOAD.reset(token)
    report["env"]["machine_load"] = load.result
    if load.result.get("busy"):
        log(f"warning: busy machine ({load.result['why']}): the timings and ratios of this run are unreliable")
    return report


def run_plan(plan: BenchPlan, cfg: BenchConfig, log: Callable[[str], None], progress=None) -> dict[str, Any]:
    """Measure the plan's rows, then the report (recorded in the manifest when ``cfg.record``)."""
    if plan.kind == CHAT:  # conversations: TTFT, decode tokens/s, turn 2 with the cache
        from .chat_bench import chat_bench

        ref = pytorch_reference(plan.bundle, log) if cfg.pytorch else None
        return chat_bench(plan.bundle, plan.variants, cfg, plan.default, log, ref)
    return bench_report(plan, measure(plan, cfg, log, progress), cfg, log)
