"""Bundle integrity: hashes, schema, missing files, atomic replace on interruption."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mmdeploy.errors import BundleError
from mmdeploy.runtimes import load
from mmdeploy.runtimes.bundle import MANIFEST, VERIFIED, Bundle, BundleWriter


@pytest.fixture
def bundle_copy(clip_bundle, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(clip_bundle, dst)
    return dst


def test_manifest_lists_every_file_with_its_hash(clip_bundle):
    b = Bundle.open(clip_bundle)
    on_disk = {p.relative_to(clip_bundle).as_posix() for p in clip_bundle.rglob("*") if p.is_file()} - {
        MANIFEST,
        VERIFIED,
    }
    assert set(b.manifest["files"]) == on_disk
    b.verify_all()
    for a in b.artifacts:
        assert set(a.files) <= on_disk
        assert a.parity["cosine"] > 0.99 and "max_abs_diff" in a.parity
        assert a.built_for["target"] == "cpu"
    assert b.manifest["source"]["weights_sha256"]
    assert {"vision", "text"} == set(b.components)


def test_tampered_artifact_is_refused_naming_the_file(bundle_copy):
    onnx = bundle_copy / "onnx" / "vision.onnx"
    with open(onnx, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="vision.onnx.*sha256"):
        load(bundle_copy, backend="onnxruntime", precision="fp32")


def test_hash_stamps_skip_rehashing_only_unchanged_files(bundle_copy, monkeypatch):
    import mmdeploy.runtimes.bundle as bundle_mod

    Bundle.open(bundle_copy).verify_all()  # hashes everything, records stat stamps
    assert (bundle_copy / ".verified.json").is_file()
    hashed = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    Bundle.open(bundle_copy).verify_all()
    assert hashed == []  # nothing changed: no file hashed again
    onnx = bundle_copy / "onnx" / "vision.onnx"
    st = onnx.stat()
    with open(onnx, "r+b") as f:  # same size, new content
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="vision.onnx.*sha256"):
        Bundle.open(bundle_copy).verify(["onnx/vision.onnx"])
    assert hashed == ["vision.onnx"]
    # even with its mtime forged back, `info --verify` (full) re-hashes and catches it
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match="vision.onnx.*sha256"):
        Bundle.open(bundle_copy).verify_all(full=True)


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        load(bundle_copy, backend="onnxruntime")


def _edit_manifest(root: Path, edit) -> None:
    m = json.loads((root / MANIFEST).read_text())
    edit(m)
    (root / MANIFEST).write_text(json.dumps(m))


def test_bad_preprocess_config_is_a_bundle_error_naming_the_field(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["preprocess"]["config"].update(size={"shortest_edge": -1}))
    with pytest.raises(BundleError, match=r"manifest preprocess.config: size values must be positive"):
        load(bundle_copy, backend="onnxruntime", precision="fp32")


def test_corrupt_tokenizer_is_a_bundle_error_naming_the_file(bundle_copy):
    from mmdeploy.runtimes.bundle import sha256_file

    tok = bundle_copy / "tokenizer.json"
    tok.write_text('{"version": "1.0", "model": {"type": "nope"}}')
    with pytest.raises(BundleError, match="tokenizer.json does not match its sha256"):
        load(bundle_copy, backend="onnxruntime", precision="fp32")
    # even with the manifest's hash matching it (a bundle written from a broken tokenizer)
    _edit_manifest(
        bundle_copy, lambda m: m["files"]["tokenizer.json"].update(sha256=sha256_file(tok), bytes=tok.stat().st_size)
    )
    with pytest.raises(BundleError, match="cannot read tokenizer file .*tokenizer.json"):
        load(bundle_copy, backend="onnxruntime", precision="fp32")


def test_bad_tokenizer_field_is_a_bundle_error(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["tokenizer"].update(max_length=1))
    with pytest.raises(BundleError, match="tokenizer.json: max_length must be an int >= 2, got 1"):
        load(bundle_copy, backend="onnxruntime", precision="fp32")


def test_unknown_schema_version(bundle_copy):
    m = json.loads((bundle_copy / MANIFEST).read_text())
    m["schema_version"] = 99
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="schema_version 99"):
        Bundle.open(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Bundle.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.open(tmp_path / "empty")
    (tmp_path / "empty" / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        Bundle.open(tmp_path / "empty")


def test_unknown_variant_is_a_clear_error(clip_bundle):
    with pytest.raises(BundleError, match="has no onnxruntime/int8"):
        load(clip_bundle, backend="onnxruntime", precision="int8")


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_interrupted_export_leaves_nothing_and_keeps_existing(bundle_copy, monkeypatch):
    from mmdeploy.exporter.export import export
    from mmdeploy.runtimes.backends.openvino import OpenVino

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(OpenVino, "build", boom)
    before = {p: p.read_bytes() for p in [bundle_copy / MANIFEST, bundle_copy / "onnx" / "vision.onnx"]}
    # over an existing bundle: it stays byte-identical
    with pytest.raises(KeyboardInterrupt):
        export("clip-shapes", bundle_copy, backends=["onnxruntime", "openvino"])
    assert all(p.read_bytes() == b for p, b in before.items())
    Bundle.open(bundle_copy).verify_all()
    # into a new place: nothing is left behind
    fresh = bundle_copy.parent / "fresh"
    with pytest.raises(KeyboardInterrupt):
        export("clip-shapes", fresh, backends=["onnxruntime", "openvino"])
    assert not fresh.exists()
    assert _leftovers(bundle_copy.parent) == []


def test_writer_with_base_adds_without_touching_the_original(bundle_copy):
    original = (bundle_copy / MANIFEST).read_text()
    with pytest.raises(RuntimeError):
        with BundleWriter(bundle_copy, base=Bundle.open(bundle_copy)) as w:
            w.write_json("extra.json", {"a": 1})
            raise RuntimeError("stop")
    assert (bundle_copy / MANIFEST).read_text() == original
    with BundleWriter(bundle_copy, base=Bundle.open(bundle_copy)) as w:
        w.write_json("extra.json", {"a": 1})
    b = Bundle.open(bundle_copy)
    assert "extra.json" in b.manifest["files"]
    b.verify_all()
    assert _leftovers(bundle_copy.parent) == []


def test_writer_refuses_to_replace_a_foreign_directory(tmp_path):
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not an mmdeploy bundle"):
        with BundleWriter(foreign):
            pass
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # its own clip-shapes export (external data forced) + static INT8: 62 s CPU
def test_large_graphs_keep_weights_in_external_data(tmp_path, monkeypatch):
    """Above EXTERNAL_DATA_MIN_BYTES the ONNX weights live in <file>.data (memory-mapped by ORT):
    hashed, listed with the ORT artifact, read by OpenVINO and the quantizer."""
    import numpy as np

    import mmdeploy.exporter.export as export_mod
    import mmdeploy.exporter.graph as graph_mod
    from mmdeploy.exporter.quantize import QuantConfig, quantize

    monkeypatch.setattr(graph_mod, "EXTERNAL_DATA_MIN_BYTES", 0)  # clip-shapes is small: force it
    out = tmp_path / "ext"
    export_mod.export("clip-shapes", out, backends=["onnxruntime", "openvino"], precisions=["fp32"], threads=2)
    b = Bundle.open(out)
    assert {"onnx/vision.onnx.data", "onnx/text.onnx.data"} <= set(b.manifest["files"])
    assert (out / "onnx" / "vision.onnx").stat().st_size < 100_000  # the graph only
    ort_vision = b.find("vision", "onnxruntime", "fp32")[0]
    assert ort_vision.files == ["onnx/vision.onnx", "onnx/vision.onnx.data"]
    quantize(out, QuantConfig(precision="int8", calib="shapes", samples=8, threads=2))
    b = Bundle.open(out)
    b.verify_all(full=True)
    assert b.find("vision", "onnxruntime", "int8")[0].passed
    img = np.zeros((64, 64, 3), np.uint8)
    ref = load(out, backend="onnxruntime", precision="fp32").embed_images([img])
    for backend, precision in [("openvino", "fp32"), ("onnxruntime", "int8")]:
        e = load(out, backend=backend, precision=precision).embed_images([img])
        assert float((e * ref).sum()) / float(np.linalg.norm(e) * np.linalg.norm(ref)) > 0.99
    (out / "onnx" / "vision.onnx.data").unlink()
    with pytest.raises(BundleError, match="vision.onnx.data.*missing"):
        load(out, backend="onnxruntime", precision="fp32")
