"""Writers of one bundle or job folder at the same time (issue 32): one at a time under an OS file
lock beside the target, each building on what the one before left, so every command that exits 0
has its work in the result; --no-wait exits 2 naming the holder; readers never block."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mmdeploy.common.locks import lock_path, writer_lock
from mmdeploy.runtimes.bundle import Bundle, remove_stale

MMDEPLOY = [str(Path(sys.executable).parent / "mmdeploy")]  # the console script, as a user runs it


# align_bundle (align-shapes on onnxruntime + openvino fp32, exported once per run): conftest.py


def _holder(target: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the writer lock of ``target`` for ``seconds`` (then exits)."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from mmdeploy.common.locks import writer_lock
        with writer_lock({str(target)!r}):
            print("held", flush=True)
            time.sleep({seconds})
        """
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_waits_once_and_no_wait_exits_2_naming_the_holder(align_bundle, tmp_path, cli_inprocess):
    b = tmp_path / "b"
    shutil.copytree(align_bundle, b)
    holder = _holder(b, 600)
    try:
        r = cli_inprocess("quantize", str(b), "--precision", "int8", "--mode", "dynamic", "--no-wait")
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {b} is being written by pid {holder.pid} (") and "since" in line, line
        assert "leave out --no-wait" in line
        assert not Bundle.open(b).find(precision="int8")  # nothing was done
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock is released by the kernel: the next writer goes straight on, and
    # removes the lock file it left
    assert lock_path(b).exists()
    r = cli_inprocess("quantize", str(b), "--precision", "int8", "--mode", "dynamic", "--no-wait")
    assert r.returncode == 0, r.stderr
    assert "waiting for" not in r.stderr
    assert not lock_path(b).exists()
    assert Bundle.open(b).find("vision", "onnxruntime", "int8")


def test_a_waiting_writer_says_so_once_then_builds_on_the_holders_work(align_bundle, tmp_path, capfd):
    from mmdeploy.exporter.quantize import QuantConfig, quantize

    b = tmp_path / "b"
    shutil.copytree(align_bundle, b)
    holder = _holder(b, 2.0)
    try:
        quantize(b, QuantConfig(precision="int8", backend="onnxruntime", mode="dynamic", threads=1))
    finally:
        holder.wait(30)
    err = capfd.readouterr().err
    waits = [ln for ln in err.splitlines() if ln.startswith("waiting for")]
    assert len(waits) == 1, err
    assert f"waiting for {b}: bundle being written by pid {holder.pid} (" in waits[0]
    assert "--no-wait exits instead" in waits[0]
    bundle = Bundle.open(b)
    bundle.verify_all(full=True)
    assert bundle.find("text", "onnxruntime", "int8") and bundle.find("text", "openvino", "fp32")


def test_readers_never_block(align_bundle, tmp_path):
    from mmdeploy.runtimes.select import load

    b = tmp_path / "b"
    shutil.copytree(align_bundle, b)
    with writer_lock(b):  # held here: a reader in another process goes straight on
        code = f"from mmdeploy.runtimes.select import load\nload({str(b)!r}, threads=1)\nprint('ok')"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
        r = subprocess.run([*MMDEPLOY, "info", str(b)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    load(b, threads=1)


def test_threads_of_one_process_take_turns_and_a_thread_may_take_it_again(tmp_path):
    target = tmp_path / "t"
    inside, overlaps = [], []

    def work():
        with writer_lock(target):
            with writer_lock(target):  # re-entrant in one thread (export+quantize takes it twice)
                inside.append(1)
                overlaps.append(len(inside))
                time.sleep(0.05)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == [1, 1, 1, 1]
    assert not lock_path(target).exists()


def test_a_dead_writers_lock_file_is_removed_by_the_next_run(tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    p = _holder(target, 600)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert lock_path(target).exists()
    assert lock_path(target) in remove_stale(target)
    assert not lock_path(target).exists()
    # what a killed export+quantize's stage had of its own: its lock file and its writers' stages
    dead = p.pid
    inner = tmp_path / f"..b.staging-{dead}-0123abcd.staging-{dead}-89abcdef"
    (inner / "onnx").mkdir(parents=True)
    stage_lock = tmp_path / f"..b.staging-{dead}-0123abcd.lock"
    stage_lock.write_text("{}")
    assert sorted(remove_stale(target)) == sorted([inner, stage_lock])
    assert not inner.exists() and not stage_lock.exists()
    # a live holder's is not
    p = _holder(target, 600)
    try:
        assert remove_stale(target) == [] and lock_path(target).exists()
    finally:
        p.kill()
        p.wait()


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*MMDEPLOY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


WRITERS = {
    "fp16-openvino": ["quantize", "{b}", "--precision", "fp16", "--backend", "openvino", "--threads", "1"],
    "int8-dynamic": ["quantize", "{b}", "--precision", "int8", "--mode", "dynamic", "--threads", "1"],
    "bench": ["bench", "{b}", "--runs", "2", "--warmup", "0", "--no-pytorch", "--threads", "1"],
    "export": ["export", "align-shapes", "-o", "{b}", "--backend", "onnxruntime,openvino", "--threads", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "order",
    [("export", "int8-dynamic", "fp16-openvino", "bench"), ("int8-dynamic", "bench", "fp16-openvino", "export")],
)
def test_writers_of_every_kind_started_together_all_keep_their_work(align_bundle, tmp_path, order):
    """quantize fp16 openvino + quantize int8 dynamic + bench recording + export, started within
    a second of each other in two orders: every one exits 0 and its work is in the bundle (an
    export of the same checkpoint keeps the variants built from its very graphs)."""
    b = tmp_path / "b"
    shutil.copytree(align_bundle, b)
    # A holder keeps the lock until the first writer says it waits, so they meet on every machine
    # (on a quiet one the first quantize finished before the export reached the lock: no meeting)
    holder = _holder(b, 600)
    procs = {}
    try:
        for name in order:
            procs[name] = _start([a.format(b=b) for a in WRITERS[name]])
            time.sleep(0.3)
        first = procs[order[0]]
        seen = []
        while not any("waiting for" in line for line in seen):
            line = first.stderr.readline()
            if not line:  # it ended without waiting: say what it printed
                pytest.fail(f"{order[0]} never waited for the held lock: {''.join(seen)[-2000:]}")
            seen.append(line)
    except BaseException:  # the writers must not outlive a failed test
        for p in procs.values():
            p.kill()
            p.communicate()
        raise
    finally:
        holder.kill()
        holder.wait()
    out = {name: p.communicate(timeout=600) for name, p in procs.items()}
    out[order[0]] = (out[order[0]][0], "".join(seen) + out[order[0]][1])
    for name, p in procs.items():
        assert p.returncode == 0, (name, out[name][1][-2000:])
    bundle = Bundle.open(b)
    bundle.verify_all(full=True)
    have = {(a.component, a.backend, a.precision) for a in bundle.artifacts}
    for comp in ("vision", "text"):
        assert {(comp, "onnxruntime", "fp32"), (comp, "openvino", "fp32")} <= have
        assert (comp, "openvino", "fp16") in have and (comp, "onnxruntime", "int8") in have
    recorded = {**bundle.manifest.get("measured", {}), **bundle.manifest.get("measured_busy", {})}
    assert recorded and all("onnxruntime/fp32" in t for t in recorded.values()), bundle.manifest.keys()
    assert any("waiting for" in err for _, err in out.values())  # they did meet
    assert not list(b.parent.glob(".b.*"))  # no stage, no lock left


def test_two_jobs_into_one_folder_compute_every_input_exactly_once(align_bundle, tmp_path):
    import pyarrow.parquet as pq

    from mmdeploy.jobs.runner import run_job
    from mmdeploy.jobs.store import JOB, read_job, write_json_atomic

    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a red circle number {i}\n" for i in range(40)))
    out = tmp_path / "job"
    run_job(align_bundle, out, texts=[str(texts)], shard_size=5, threads=1, progress=False)
    # what a killed run leaves: the last shards not listed (their files removed or half-written)
    meta = read_job(out)
    for name in sorted(meta["shards"])[3:]:
        del meta["shards"][name]
        (out / name).unlink()
    write_json_atomic(out / JOB, meta)
    results, errors = [], []

    def resume():
        try:
            results.append(
                run_job(align_bundle, out, texts=[str(texts)], shard_size=5, threads=1, resume=True, progress=False)
            )
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert sorted(r["this_run"]["shards"] for r in results) == [0, 5]  # one did the rest, the other found it done
    items = [i for f in sorted(out.glob("part-*.parquet")) for i in pq.read_table(f)["item"].to_pylist()]
    assert sorted(items) == list(range(40))
    assert not lock_path(out).exists()


def test_latencies_of_a_busy_machine_never_choose_the_default(align_bundle, tmp_path):
    """bench on a machine it flags busy records its latencies apart (measured_busy, with why):
    load() keeps choosing by the quiet measurements and the static preference."""
    from mmdeploy.runtimes.select import measured_latency, record_measured, select_variant

    b = tmp_path / "b"
    shutil.copytree(align_bundle, b)
    default = "/".join(select_variant(Bundle.open(b)))
    other = next(k for k in ("openvino/fp32", "onnxruntime/fp32") if k != default)
    record_measured(Bundle.open(b), {other: 0.001, default: 1000.0}, busy="other processes used 1.90 cores")
    bundle = Bundle.open(b)
    assert "/".join(select_variant(bundle)) == default and measured_latency(bundle) == {}
    busy = next(iter(bundle.manifest["measured_busy"].values()))
    assert busy[other] == {"ms": 0.001, "busy": "other processes used 1.90 cores"}
    record_measured(bundle, {other: 0.001, default: 1000.0})  # the same figures on a quiet machine: used
    assert "/".join(select_variant(Bundle.open(b))) == other
