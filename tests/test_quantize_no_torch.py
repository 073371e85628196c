"""`mmdeploy quantize` is build-time code that needs no torch: run it where torch and transformers
cannot be imported (a meta-path blocker loaded by sitecustomize, so it holds from the first
import of the interpreter, the CLI's included)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmdeploy.runtimes.bundle import Bundle

BLOCKED = ("torch", "transformers")
BLOCKER = f"""
import sys

BLOCKED = {BLOCKED!r}


class NoTorch:
    \"\"\"Any import of a blocked package fails as if it were not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: quantize must not need it)", name=name)
        return None


sys.meta_path.insert(0, NoTorch())
"""
# after the command, in the same interpreter: nothing blocked (nor the exporter's torch side) got in
AUDIT = """
import atexit, sys

def _audit():
    bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    bad += sorted(m for m in sys.modules if m.startswith(("mmdeploy.exporter.families", "mmdeploy.exporter.export")))
    if bad:
        print("imported:", bad, file=sys.stderr)
        sys.stderr.flush()
        import os
        os._exit(3)

atexit.register(_audit)
"""


def run_cli_without_torch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "no-torch-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER) + AUDIT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    code = "import sys; from mmdeploy.cli import main; sys.argv[0] = 'mmdeploy'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path
    )


def test_the_blocker_blocks(tmp_path):
    site = tmp_path / "no-torch-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = dict(os.environ, PYTHONPATH=str(site))
    r = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "blocked: quantize must not need it" in r.stderr


def test_quantize_an_encoder_bundle_without_torch(clip_bundle, tmp_path):
    """Static INT8 calibrated on the shapes data set (images and texts): recipe, calibration and
    fidelity feeds, gate."""
    dst = tmp_path / "b"
    shutil.copytree(clip_bundle, dst)
    r = run_cli_without_torch(
        tmp_path,
        "quantize",
        str(dst),
        "--precision",
        "int8",
        "--backend",
        "onnxruntime",
        "--calib",
        "shapes",
        "--samples",
        "4",
        "--threads",
        "2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    arts = Bundle.open(dst).find(backend="onnxruntime", precision="int8")
    assert {a.component for a in arts} == {"vision", "text"}
    assert all(a.parity and a.gate for a in arts)


def test_quantize_a_captioner_without_torch(shapes_bundle, tmp_path):
    """A generative family: data-free INT8, its fidelity feeds and the greedy-agreement gate."""
    pytest.importorskip("skimage")  # its held-out photos
    dst = tmp_path / "b"
    shutil.copytree(shapes_bundle, dst)
    r = run_cli_without_torch(
        tmp_path, "quantize", str(dst), "--precision", "int8", "--backend", "onnxruntime", "--threads", "2"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    b = Bundle.open(dst)
    assert {a.component for a in b.find(backend="onnxruntime", precision="int8")} == set(b.components)
    assert "onnxruntime/int8" in b.manifest["variant_checks"]["greedy_agreement_vs_fp32"]


def test_the_device_package_holds_no_build_time_data():
    """runtimes/ (what a device installs) never reaches the photos data set (scikit-image, [export]):
    calibration and fidelity feeds are exporter/quantization's."""
    from .test_layers import ROOT, _imports

    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {mod}"
        for path in sorted((ROOT / "runtimes").rglob("*.py"))
        for line, mod in _imports(path)
        if mod.startswith(("mmdeploy.common.datasets.photos", "skimage"))
    ]
    assert not bad, "\n".join(bad)
