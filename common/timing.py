"""Timing several runners fairly on a shared machine: their calls alternate run by run, so a burst
of other load (or a clock change) lands on all of them alike and their ratios survive it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def alternating(
    runners: dict[str, Callable[[], Any]],
    runs: int,
    warmup: int,
    tick: Callable[[], None] = lambda: None,
    block: int = 1,
    settle: int = 1,
) -> dict[str, list[float]]:
    """{name: [ms per call]}: warm-up calls of each, then turn r of every runner in turn, r = 1..runs.
    block > 1: each turn is `settle` untimed calls then `block` timed ones, for runners whose idle
    threads spin for a while after a call (ONNX Runtime's default): the untimed calls absorb the
    previous runner's spinning, so each keeps the thread settings it is used with."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):
        for k, run in runners.items():
            for _ in range(settle if block > 1 else 0):
                run()
            for _ in range(block):
                t = time.perf_counter()
                run()
                times[k].append((time.perf_counter() - t) * 1000)
                tick()
    return times


def runs_for(
    runners: dict[str, Callable[[], Any]],
    seconds: float,
    least: int = 10,
    most: int = 200,
    block: int = 1,
    settle: int = 1,
) -> int:
    """How many alternating turns fit in about `seconds`, from one timed turn (after one warm-up)."""
    one = alternating(runners, 1, 1)
    per_turn = sum(v[0] for v in one.values()) / 1000 * (block + (settle if block > 1 else 0))
    return max(least, min(most, int(seconds / max(per_turn, 1e-6))))


def significant(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant figures: a speed keeps its relative precision on a
    slow machine and a fast one alike (a fixed number of decimals turns 0.04 items/s into 0.0)."""
    return float(f"{x:.{digits}g}")
