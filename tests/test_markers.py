"""What a test needs beyond the core (a backend, a GPU, a browser, valgrind, qemu, native bf16) is a
marker declared in pyproject.toml and probed once in conftest.py, never a skip written in a test."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from .conftest import PROBES

TESTS = Path(__file__).resolve().parent
# a skip reason that names a probed need and says it is missing (or, reversed, present): the marker's job
NEEDS = ("tensorrt", "nvidia", "gpu", "cuda", "bf16", "chromium", "valgrind", "qemu")
ABSENT = (
    "not installed",
    "is missing",
    "no native",
    "needs an nvidia",
    "needs tensorrt",
    "no chromium",
    "is installed",
)
# a skip inside a test, after the part that runs everywhere (its CPU half) has run
ALLOWED = {("test_caption.py", "onnxruntime-gpu is installed")}


def _ad_hoc_skips(path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        call = ast.unparse(node.func)
        words = " ".join(
            a.value
            for a in [*node.args, *(k.value for k in node.keywords)]
            if isinstance(a, ast.Constant) and isinstance(a.value, str)
        ).lower()
        if (
            call in ("pytest.skip", "pytest.mark.skipif")
            and any(n in words for n in NEEDS)
            and any(w in words for w in ABSENT)
        ):
            if (path.name, words) not in ALLOWED:
                bad.append(f"{path.name}:{node.lineno} {call}({words!r})")
        if call == "pytest.importorskip" and words.split(" ")[0] in PROBES:
            bad.append(f"{path.name}:{node.lineno} importorskip({words!r}): mark it @pytest.mark.{words.split()[0]}")
    return bad


def test_optional_needs_are_markers_not_skips():
    bad = [b for p in sorted(TESTS.glob("test_*.py")) for b in _ad_hoc_skips(p)]
    assert not bad, "skips written in tests (declare a marker, conftest.PROBES answers it):\n" + "\n".join(bad)


def test_every_probe_is_a_declared_marker(pytestconfig):
    declared = {m.split(":")[0].split("(")[0] for m in pytestconfig.getini("markers")}
    assert set(PROBES) <= declared and "lacks" in declared


def test_the_check_sees_an_ad_hoc_skip(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import pytest\nimport shutil\n"
        "def test_x():\n"
        "    if shutil.which('valgrind') is None:\n"
        "        pytest.skip('valgrind is not installed')\n"
        "pytest.importorskip('openvino')\n"
    )
    assert sorted(b.split(" ")[0] for b in _ad_hoc_skips(probe)) == ["test_probe.py:5", "test_probe.py:6"]


@pytest.mark.skipif(sys.platform != "linux", reason="the probes read Linux tools")
def test_each_probe_answers_none_or_one_line():
    from .conftest import missing

    for name in PROBES:
        why = missing(name)
        assert why is None or (why and "\n" not in why), (name, why)


def test_a_worker_that_dies_fails_the_run_at_once(tmp_path, pytestconfig):
    """A native crash in a test must end the run red, naming the test, rather than leave it idle (the xdist
    scheduler this suite uses can hang after replacing a crashed worker): the suite's own options, run on
    four small files, one of which takes its worker down with SIGSEGV."""
    import re
    import subprocess

    opts = " ".join(pytestconfig.getini("addopts"))
    (tmp_path / "pytest.ini").write_text(f"[pytest]\naddopts = {opts} -p no:cacheprovider\n")
    for i in range(3):
        (tmp_path / f"test_ok{i}.py").write_text(
            "import time\ndef test_a():\n    time.sleep(0.5)\ndef test_b():\n    pass\n"
        )
    (tmp_path / "test_crash.py").write_text(
        "import os, signal\ndef test_crash():\n    os.kill(os.getpid(), signal.SIGSEGV)\ndef test_after():\n    pass\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert re.search(r"FAILED test_crash\.py::test_crash - worker 'gw\d' crashed", out), out[-3000:]
