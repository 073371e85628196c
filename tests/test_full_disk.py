"""A full disk named as what it is (issue 32): export, quantize, a job and bench --json onto a small
tmpfs say so in one line naming the file system (exit 2, never "corrupt bundle"), leave nothing
half-written, and the bundle that was there still verifies."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mmdeploy.runtimes.bundle import Bundle

# align_bundle (align-shapes on onnxruntime + openvino fp32, exported once per run): conftest.py


@pytest.fixture()
def small_disk(tmp_path):
    """mount(mb) -> a fresh tmpfs of that size under tmp_path (root only: skipped otherwise)."""
    mounted: list[Path] = []

    def mount(mb: int) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}M", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave_kb: int) -> Path:
    """Fill the file system at mnt up to ``leave_kb`` KB free."""
    import os

    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_kb * 1024))
    return filler


def one_error_line(stderr: str, mnt: Path) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    line = lines[0]
    assert f"file system at {mnt}" in line and "tmpfs" in line, line
    assert "corrupt" not in line and "re-export" not in line and "unexpected" not in line, line
    return line


def leftovers(mnt: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in mnt.iterdir() if p.name not in keep | {"lost+found"})


def test_export_onto_a_disk_too_small_is_refused_before_the_work(small_disk, cli_inprocess):
    mnt = small_disk(2)
    r = cli_inprocess("export", "align-shapes", "-o", str(mnt / "b"), "--backend", "onnxruntime,openvino")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr, mnt)
    assert "needs about" in line and "MB free of" in line, line
    assert leftovers(mnt, set()) == []


def test_export_that_runs_out_of_space_keeps_the_old_bundle(align_bundle, small_disk, cli_inprocess, monkeypatch):
    """The free-space estimate passed (a disk filled meanwhile): the write itself fails."""
    from mmdeploy.exporter import export as export_module

    mnt = small_disk(4)
    shutil.copytree(align_bundle, mnt / "b")
    monkeypatch.setattr(export_module, "check_space", lambda *a: "")
    r = cli_inprocess("export", "align-shapes", "-o", str(mnt / "b"), "--backend", "onnxruntime,openvino")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr, mnt)
    assert "space" in line and "the bundle there is unchanged" in line, line
    assert leftovers(mnt, {"b"}) == []  # no stage, no lock file
    Bundle.open(mnt / "b").verify_all(full=True)


@pytest.mark.parametrize("estimate", ["checked", "bypassed"])
def test_quantize_on_a_nearly_full_disk_names_the_disk(align_bundle, small_disk, cli_inprocess, monkeypatch, estimate):
    """Refused before the work by the estimate; or, when the disk fills meanwhile, a file this
    command wrote cut short (read back as a DecodeError) is reported as the full disk it is."""
    from mmdeploy.exporter import quantize as quantize_module

    mnt = small_disk(4)
    shutil.copytree(align_bundle, mnt / "b")
    before = json.loads((mnt / "b" / "manifest.json").read_text())
    fill(mnt, 300)
    if estimate == "bypassed":
        monkeypatch.setattr(quantize_module, "check_space", lambda *a: "")
    r = cli_inprocess("quantize", str(mnt / "b"), "--precision", "int8", "--mode", "dynamic", "--threads", "1")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr, mnt)
    assert ("needs about" in line) == (estimate == "checked"), line
    assert leftovers(mnt, {"b", "filler"}) == []
    Bundle.open(mnt / "b").verify_all(full=True)
    assert json.loads((mnt / "b" / "manifest.json").read_text()) == before


def test_a_job_on_a_full_disk_keeps_its_finished_shards_and_resumes(align_bundle, small_disk, cli_inprocess):
    import pyarrow.parquet as pq

    mnt = small_disk(1)
    texts = mnt.parent / "texts.txt"
    texts.write_text("".join(f"a blue square number {i}\n" for i in range(60)))
    filler = fill(mnt, 40)
    args = ("embed", str(align_bundle), "--texts", str(texts), "--out", str(mnt / "job"), "--shard-size", "10")
    r = cli_inprocess(*args, "--threads", "1")
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr, mnt)
    assert "--resume once there is room" in line, line
    assert not [p.name for p in (mnt / "job").iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    assert leftovers(mnt, {"job", "filler"}) == []  # no lock file left
    filler.unlink()
    r = cli_inprocess(*args, "--threads", "1", "--resume")
    assert r.returncode == 0, r.stderr
    items = [i for f in sorted((mnt / "job").glob("part-*.parquet")) for i in pq.read_table(f)["item"].to_pylist()]
    assert sorted(items) == list(range(60))


def test_bench_json_and_its_record_on_a_full_disk(align_bundle, small_disk, cli_inprocess):
    mnt = small_disk(4)
    shutil.copytree(align_bundle, mnt / "b")
    before = (mnt / "b" / "manifest.json").read_text()
    fill(mnt, 0)
    r = cli_inprocess(
        "bench", str(mnt / "b"), "--runs", "1", "--warmup", "0", "--no-pytorch", "--json", str(mnt / "r.json")
    )
    assert r.returncode == 2, r.stderr
    one_error_line(r.stderr, mnt)
    assert "could not record measurements" in r.stderr  # the record could not be written: said, not fatal
    assert leftovers(mnt, {"b", "filler"}) == []  # no half-written report, no stage, no lock file
    assert (mnt / "b" / "manifest.json").read_text() == before
    Bundle.open(mnt / "b").verify_all(full=True)
