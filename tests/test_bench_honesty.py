"""Benchmarks that stay honest on a busy machine (issue 17): other processes' CPU time and steal
time are measured while bench runs, and a busy machine is flagged in the JSON and the table."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mmdeploy.common.env import MachineLoad

SPIN = "import time\nt = time.time() + {s}\nwhile time.time() < t: pass\n"


def _spinners(n: int, seconds: float) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN.format(s=seconds)]) for _ in range(n)]


def test_our_own_work_is_not_counted_as_others():
    with MachineLoad(sample_s=0.2) as load:
        t = time.perf_counter() + 0.5
        while time.perf_counter() < t:
            pass
    assert load.result["others_cpu_cores"] < 0.5, load.result


def test_injected_load_is_flagged():
    procs = _spinners(2, 3.0)
    try:
        time.sleep(0.2)
        with MachineLoad(sample_s=0.3) as load:
            time.sleep(0.8)
    finally:
        for p in procs:
            p.kill()
    r = load.result
    assert r["busy"] is True and r["others_cpu_cores"] > 1.0 and "other processes used" in r["why"], r


def test_bench_reports_a_busy_machine_in_json_and_table(clip_bundle):
    from rich.console import Console

    from mmdeploy.benchmarks.bench import BenchConfig, bench
    from mmdeploy.benchmarks.report import table

    said: list[str] = []
    procs = _spinners(2, 8.0)
    try:
        time.sleep(0.2)
        report = bench(str(clip_bundle), BenchConfig(backends=["onnxruntime"], precisions=["fp32"], batches=[1], runs=3,
                                                     warmup=1, pytorch=False, record=False), log=said.append)
    finally:
        for p in procs:
            p.kill()
    load = report["env"]["machine_load"]
    assert load["busy"] is True, load
    assert any(s.startswith("warning: busy machine") for s in said)
    console = Console(record=True, width=200)
    console.print(table(report))
    assert "BUSY MACHINE" in console.export_text()


def test_interleaved_bench_times_every_row_and_keeps_the_same_rows(clip_bundle):
    """--interleave alternates PyTorch's and each variant's calls; the report has the same rows
    (with p50, speedup and fidelity) as a sequential run and says it was interleaved."""
    pytest.importorskip("torch")
    from mmdeploy.benchmarks.bench import BenchConfig, bench

    kw = dict(backends=["onnxruntime"], precisions=["fp32"], batches=[1, 4], runs=4, warmup=1, record=False)
    seq = bench(str(clip_bundle), BenchConfig(**kw), log=lambda m: None)
    inter = bench(str(clip_bundle), BenchConfig(interleave=True, **kw), log=lambda m: None)
    key = lambda r: (r["component"], r["backend"], r["precision"], r["batch"])  # noqa: E731
    assert sorted(map(key, seq["results"])) == sorted(map(key, inter["results"]))
    assert inter["config"]["interleaved"] is True and seq["config"]["interleaved"] is False
    for r in inter["results"]:
        assert r["p50_ms"] > 0 and r["items_per_s"] > 0
        if r["backend"] != "pytorch":
            assert r["speedup_vs_pytorch"] > 0 and r["cosine_vs_pytorch"] > 0.9999
