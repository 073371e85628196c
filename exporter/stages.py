"""Each export stage's wall time and peak RSS: one log line per stage, and the same figures in the
manifest (``exporter.stages``), so a slow or memory-hungry export says where it went."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..common.signals import check_terminated

# ru_maxrss is in KiB on Linux, in bytes on macOS
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def peak_rss_mb() -> tuple[float, float]:
    """(this process's, its largest waited-for child's) peak resident set so far, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _RSS_UNIT
    return own / 1e6, kids / 1e6


class Stages:
    """Times named stages; ``records`` is what the manifest keeps. The peak RSS is the process's
    high-water mark when the stage ends (it never goes down: a stage whose peak equals the one
    before did not raise it)."""

    def __init__(self, log: Callable[[str], None] = lambda s: None):
        self.log = log
        self.records: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str, announce: bool = False) -> Iterator[None]:
        """``announce``: say when it starts too (stages that can take minutes on a large model)."""
        check_terminated()
        if announce:
            self.log(f"{name} ...")
        t = time.perf_counter()
        yield
        check_terminated()
        self.record(name, time.perf_counter() - t)

    def record(self, name: str, seconds: float) -> None:
        """A stage that took `seconds` and ends now."""
        own, kids = peak_rss_mb()
        self.records.append(
            {"name": name, "seconds": round(seconds, 2), "peak_rss_mb": round(own), "children_peak_rss_mb": round(kids)}
        )
        self.log(f"stage {name}: {seconds:.1f}s, peak RSS {own:.0f} MB (children {kids:.0f} MB)")
