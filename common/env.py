"""What machine a report was measured on: ratios differ between CPU kinds, so every report says."""

from __future__ import annotations

import os
import platform

ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "avx_vnni",
)


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count()}


def library_versions() -> dict[str, str]:
    import importlib

    from .. import __version__

    out = {"mmdeploy": __version__, "python": platform.python_version()}
    for mod in ("numpy", "onnxruntime", "openvino", "torch", "transformers", "onnx"):
        try:
            m = importlib.import_module(mod)
            out[mod] = getattr(m, "__version__", None) or m.get_version()
        except Exception:
            continue
    return out


def environment(threads: int | None) -> dict:
    return {"cpu": cpu_info(), "threads": threads, "versions": library_versions(), "platform": platform.platform()}


# -- is the machine quiet enough to measure on? --------------------------------------------------

BUSY_OTHERS_CORES = 0.25  # other processes using a quarter core on average already moves ratios by >10%
BUSY_STEAL_PCT = 5.0  # the hypervisor taking this much of our CPU time


def _proc_stat() -> tuple[float, float, float] | None:
    """(busy, steal, total) CPU seconds of the whole machine from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0.0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


class MachineLoad:
    """What else ran while a benchmark did: other processes' CPU (the machine's busy time minus
    this process's own), steal time, and the load before it started.

        with MachineLoad() as load:
            ...timed work...
        load.result  # {"others_cpu_cores", "steal_pct", "load1_before", "busy", "why"}

    A busy machine is reported, not hidden: PyTorch's threads collapse beside other work (a
    106 ms call measured 2.2 s), so its ratios say little."""

    def __init__(self, sample_s: float = 0.3):
        self.sample_s = sample_s
        self.result: dict = {}

    def _window(self) -> tuple:
        import time

        return _proc_stat(), time.process_time(), time.perf_counter()

    @staticmethod
    def _others(a, b) -> tuple[float, float] | None:
        (s0, c0, t0), (s1, c1, t1) = a, b
        if s0 is None or s1 is None or t1 <= t0:
            return None
        others = max(0.0, (s1[0] - s0[0]) - (c1 - c0)) / (t1 - t0)
        total = s1[2] - s0[2]
        steal = 100.0 * (s1[1] - s0[1]) / total if total > 0 else 0.0
        return others, steal

    def __enter__(self) -> MachineLoad:
        import time

        a = self._window()
        time.sleep(self.sample_s)  # before: nothing of ours runs, so all busy time is someone else's
        self._before = self._others(a, self._window())
        self._start = self._window()
        try:
            self._load1 = os.getloadavg()[0]
        except OSError:
            self._load1 = None
        return self

    def __exit__(self, *exc) -> bool:
        self.result = self.so_far()
        return False

    def so_far(self) -> dict:
        """The result as of now, inside the block: bench decides with it whether its latencies
        may choose the default variant before it records them."""
        during = self._others(self._start, self._window())
        if during is None:
            return {"busy": None, "why": "no /proc/stat here: load not measured"}
        others = max(during[0], self._before[0] if self._before else 0.0)
        why = []
        if others > BUSY_OTHERS_CORES:
            why.append(f"other processes used {others:.2f} cores")
        if during[1] > BUSY_STEAL_PCT:
            why.append(f"steal time {during[1]:.1f}%")
        return {
            "others_cpu_cores": round(others, 3),
            "others_before_cores": round(self._before[0], 3) if self._before else None,
            "steal_pct": round(during[1], 2),
            "load1_before": self._load1,
            "cores": os.cpu_count(),
            "busy": bool(why),
            "why": "; ".join(why) or "quiet",
        }
