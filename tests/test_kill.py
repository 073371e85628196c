"""SIGKILL at random points (seeded) of export, quantize, bench recording and a job (issue 32): no
handler runs, yet the bundle there always verifies, a job resumes to exactly-once rows, and the
next run removes the stages and the lock files the killed ones left."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdeploy.runtimes.bundle import Bundle

MMDEPLOY = str(Path(sys.executable).parent / "mmdeploy")  # the console script, as a user runs it
SEED = 32


# align_bundle (align-shapes on onnxruntime + openvino fp32, exported once per run): conftest.py


def run(args: list[str], kill_after: float | None = None) -> int | None:
    """Run ``mmdeploy ARGS``; with ``kill_after``, SIGKILL it then (None: it was killed). The kill takes
    its whole process group: OpenVINO's telemetry forks a sender that holds stderr open, and a killed
    parent left it orphaned there (seen: 13 min in getaddrinfo without a network), so reading stderr hung."""
    p = subprocess.Popen(
        [MMDEPLOY, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        p.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return None
    finally:
        err = p.stderr.read()
        p.stderr.close()
    assert p.returncode == 0, err[-2000:]
    return p.returncode


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    run(args)
    return time.perf_counter() - t


def kill_points(n: int, seconds: float, rng: random.Random) -> list[float]:
    """n points spread over a run of ``seconds`` (start-up included: a kill may land anywhere)."""
    return [rng.uniform(0.1, 1.0) * seconds for _ in range(n)]


def run_killed(args: list[str], at: float, before_retry=lambda: None) -> bool:
    """Run ``mmdeploy ARGS`` with a SIGKILL at ``at`` s; a run that finished first (the machine
    got faster than when it was timed: a busy one's load changes) is run again with the point
    halved, so each round kills once on any machine. True once killed."""
    for _ in range(8):  # 1/256 of a run lands in the interpreter's start-up: killed there at worst
        if run(args, kill_after=at) is None:
            return True
        before_retry()
        at /= 2
    return False


def leftovers(target: Path) -> list[str]:
    """What is beside the target besides itself: stages, old copies, lock files (its own and its stages')."""
    return sorted(
        p.name for p in target.parent.iterdir() if p.name.startswith((f".{target.name}.", f"..{target.name}."))
    )


def verifies(b: Path) -> Bundle:
    bundle = Bundle.open(b)
    bundle.verify_all(full=True)
    return bundle


@pytest.mark.slow
def test_sigkill_during_export_and_quantize_leaves_a_bundle_that_verifies(align_bundle, tmp_path):
    rng = random.Random(SEED)
    b = tmp_path / "b"
    shutil.copytree(align_bundle, b)
    export = ["export", "align-shapes", "-o", str(b), "--backend", "onnxruntime,openvino", "--threads", "1"]
    quant = [
        ["quantize", str(b), "--precision", "int8", "--mode", "dynamic", "--threads", "1"],
        ["quantize", str(b), "--precision", "fp16", "--backend", "openvino", "--threads", "1"],
    ]
    kills = 0
    for at in kill_points(4, timed(export), rng):
        kills += run_killed(export, at)
        verifies(b)
    # export+quantize in one atomic step: its stage and its stage's lock are left by a kill too
    both = ["export", "align-shapes", "-o", str(b), "--backend", "onnxruntime", "--precision", "fp32,int8"]
    both += ["--threads", "1"]
    for at in kill_points(2, timed(both), rng):
        kills += run_killed(both, at)
        verifies(b)
    for i, at in enumerate(kill_points(4, max(timed(quant[0]), timed(quant[1])), rng)):
        kills += run_killed(quant[i % 2], at)
        verifies(b)
    run(quant[0])  # the next run: removes what the killed ones left
    assert leftovers(b) == []
    assert verifies(b).find("vision", "onnxruntime", "int8")
    assert kills == 10, kills  # every round killed once (run_killed)


@pytest.mark.slow
def test_sigkill_during_bench_recording_leaves_a_bundle_that_verifies(align_bundle, tmp_path):
    rng = random.Random(SEED + 1)
    b = tmp_path / "b"
    shutil.copytree(align_bundle, b)
    bench = ["bench", str(b), "--runs", "3", "--warmup", "0", "--no-pytorch", "--threads", "1"]
    kills = 0
    for at in kill_points(4, timed(bench), rng):
        kills += run_killed(bench, at)
        verifies(b)
    run(bench)
    assert leftovers(b) == []
    m = verifies(b).manifest
    assert m.get("measured") or m.get("measured_busy")
    assert kills == 4, kills


@pytest.mark.slow
def test_sigkill_during_a_job_then_resume_gives_every_row_exactly_once(align_bundle, tmp_path):
    import pyarrow.parquet as pq

    rng = random.Random(SEED + 2)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a green triangle number {i}\n" for i in range(3000)))
    seconds = timed(
        ["embed", str(align_bundle), "--texts", str(texts), "--out", str(tmp_path / "t"), "--shard-size", "100"]
    )
    kills = 0
    for i, at in enumerate(kill_points(6, seconds, rng)):  # each round: a fresh job killed, then resumed
        out = tmp_path / f"job{i}"
        job = ["embed", str(align_bundle), "--texts", str(texts), "--out", str(out), "--shard-size", "100"]
        kills += run_killed(job, at, before_retry=lambda: shutil.rmtree(out))
        run([*job, "--resume"] if (out / "_job.json").exists() else job)
        items = [n for f in sorted(out.glob("part-*.parquet")) for n in pq.read_table(f)["item"].to_pylist()]
        assert sorted(items) == list(range(3000))
        assert not list(out.glob(".*.tmp")) and leftovers(out) == []
    assert kills == 6, kills
