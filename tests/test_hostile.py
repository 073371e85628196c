"""Hostile input: tampered and escaping bundles are refused with one line naming the field, the CLI
prints no traceback (exit 2, nothing written), and files outside a bundle are never opened.
This suite grows with every bug found by trying to break the tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmdeploy.errors import BundleError
from mmdeploy.runtimes import Bundle, load
from mmdeploy.runtimes.bundle import MANIFEST


@pytest.fixture()
def bundle(clip_bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(clip_bundle, dst)
    return dst


def _edit(root: Path, change) -> None:
    m = json.loads((root / MANIFEST).read_text())
    change(m)
    (root / MANIFEST).write_text(json.dumps(m))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdeploy.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _one_line_exit_2(r: subprocess.CompletedProcess, *needles: str) -> None:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def _vision(m) -> dict:
    return next(a for a in m["artifacts"] if a["component"] == "vision" and a["backend"] == "onnxruntime")


# (what is tampered, the change, the field the error must name)
TAMPERED = [
    ("absolute artifact path", lambda m: _vision(m).update(path="/etc/passwd"), "artifacts[0].path"),
    ("artifact path escaping", lambda m: _vision(m).update(path="../../etc/passwd"), "artifacts[0].path"),
    ("artifact path not in its files", lambda m: _vision(m).update(path="onnx/text.onnx"), "artifacts[0].path"),
    ("artifact file not hashed", lambda m: _vision(m)["files"].append("extra.onnx"), "artifacts[0].files[1]"),
    ("files entry escaping", lambda m: m["files"].update({"../../outside": {"sha256": "0" * 64, "bytes": 1}}),
     "manifest.files key '../../outside'"),
    ("not normalised", lambda m: m["files"].update({"onnx/./x": {"sha256": "0" * 64, "bytes": 1}}), "onnx/./x"),
    ("missing family", lambda m: m.pop("family"), "manifest.family: is missing"),
    ("missing files", lambda m: m.pop("files"), "manifest.files: is missing"),
    ("components wrong type", lambda m: m.update(components=[]), "manifest.components: must be an object"),
    ("artifacts not a list", lambda m: m.update(artifacts={"a": 1}), "manifest.artifacts: must be a list"),
    ("bad sha256", lambda m: next(iter(m["files"].values())).update(sha256="xyz"), "sha256"),
    ("negative size", lambda m: next(iter(m["files"].values())).update(bytes=-1), "bytes: must be >= 0"),
    ("tokenizer max_length a string", lambda m: m["tokenizer"].update(max_length="16"), "manifest.tokenizer.max_length"),
    ("tokenizer file unlisted", lambda m: m["tokenizer"].update(file="vocab.txt"), "manifest.tokenizer.file"),
    ("unknown component", lambda m: _vision(m).update(component="audio"), "artifacts[0].component"),
    ("padding policy", lambda m: m["tokenizer"].update(padding="left"), "manifest.tokenizer.padding"),
]


@pytest.mark.parametrize("what,change,field", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_tampered_manifest_is_refused_naming_the_field(bundle, what, change, field):
    def vision_first(m):
        v = _vision(m)
        m["artifacts"] = [v] + [a for a in m["artifacts"] if a is not v]

    _edit(bundle, vision_first)
    _edit(bundle, change)
    with pytest.raises(BundleError, match="manifest") as e:
        Bundle.open(bundle)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_cli_prints_one_line_for_a_tampered_manifest(bundle):
    _edit(bundle, lambda m: _vision(m).update(path="/etc/passwd"))
    _one_line_exit_2(_cli("info", str(bundle)), "must be a relative path inside the bundle", "/etc/passwd")
    _one_line_exit_2(_cli("embed", str(bundle), "--text", "a red circle"), "/etc/passwd")


def test_manifest_that_is_not_an_object(bundle):
    (bundle / MANIFEST).write_text("[1, 2]")
    with pytest.raises(BundleError, match="must hold a JSON object"):
        Bundle.open(bundle)


def test_in_place_edit_with_mtime_restored_is_caught(bundle):
    """The stat stamp holds the ctime: an edit that restores size and mtime still re-hashes."""
    clip = load(bundle, backend="onnxruntime", precision="fp32", threads=1)  # stamps written
    assert clip.embed_texts(["a red circle"]).shape[0] == 1
    p = bundle / "onnx" / "text.onnx"
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[-9] ^= 0xFF  # same size, one byte flipped (inside an initializer)
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_mtime_ns == st.st_mtime_ns and p.stat().st_size == st.st_size
    with pytest.raises(BundleError, match="text.onnx does not match its sha256"):
        load(bundle, backend="onnxruntime", precision="fp32", threads=1)
    # the failure dropped its stamp: restoring the bytes (not the ctime) loads again
    data[-9] ^= 0xFF
    p.write_bytes(bytes(data))
    assert load(bundle, backend="onnxruntime", precision="fp32", threads=1).embed_texts(["x"]).shape[0] == 1


def test_symlink_out_of_the_bundle_is_not_opened(bundle, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(bundle / "onnx" / "text.onnx", outside)
    (bundle / "onnx" / "text.onnx").unlink()
    (bundle / "onnx" / "text.onnx").symlink_to(outside)  # same bytes: the hash alone would pass
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        load(bundle, backend="onnxruntime", precision="fp32", threads=1)


def test_verify_forces_a_full_hash(bundle):
    b = Bundle.open(bundle)
    load(b, backend="onnxruntime", precision="fp32", threads=1)
    stamps = json.loads((bundle / ".verified.json").read_text())
    assert "openvino/text.bin" not in stamps  # only what that variant opened
    load(bundle, backend="onnxruntime", precision="fp32", threads=1, verify=True)
    assert set(json.loads((bundle / ".verified.json").read_text())) == set(b.manifest["files"])
