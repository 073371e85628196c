"""The test bundle cache (tests/bundle_cache.py): a hit is the bundle the export would have written,
and the key follows everything the export reads."""

from __future__ import annotations

import json

import pytest

from mmdeploy.runtimes import Bundle

from . import bundle_cache
from .bundle_cache import _key, export_cached

pytest.importorskip("torch")


def test_a_hit_is_a_whole_copy_that_verifies_and_names_this_runs_checkpoint(tmp_path, monkeypatch):
    from .tiny_families import save_align

    monkeypatch.setenv("MMDEPLOY_TEST_BUNDLE_CACHE", str(tmp_path / "cache"))
    save_align(tmp_path / "ckpt-a")
    save_align(tmp_path / "ckpt-b")  # the same bytes at another path: a later run's checkpoint
    kw = dict(backends=["onnxruntime"], precisions=["fp32"], threads=1)
    first = export_cached(str(tmp_path / "ckpt-a"), tmp_path / "a", **kw)
    second = export_cached(str(tmp_path / "ckpt-b"), tmp_path / "b", **kw)
    assert len(list((tmp_path / "cache").glob("*/*.lock"))) == 1  # one entry: the second call was a hit
    second.verify_all(full=True)
    m1, m2 = first.manifest, Bundle.open(tmp_path / "b").manifest
    assert m2["source"]["path"] == str((tmp_path / "ckpt-b").resolve())  # what this run's export records
    assert {k: v for k, v in m1.items() if k != "source"} == {k: v for k, v in m2.items() if k != "source"}
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["source"]["path"].endswith("ckpt-a")


def test_the_key_follows_the_checkpoint_bytes_the_arguments_and_the_code(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    kw = {"backends": ["onnxruntime"], "threads": 1}
    k = _key(str(tmp_path / "ckpt"), kw)
    assert _key(str(tmp_path / "ckpt"), dict(kw)) == k
    assert _key(str(tmp_path / "ckpt"), {**kw, "threads": 2}) != k
    (tmp_path / "ckpt" / "config.json").write_text('{"a": 1}')
    assert _key(str(tmp_path / "ckpt"), kw) != k
    assert _key("clip-shapes", kw) != _key("align-shapes", kw)
    digest = bundle_cache._code_digest()
    bundle_cache._code_digest.cache_clear()
    monkeypatch.setattr(bundle_cache, "_LIBRARIES", bundle_cache._LIBRARIES + ("a-library-that-moved",))
    assert bundle_cache._code_digest() != digest
    bundle_cache._code_digest.cache_clear()


def test_off_means_a_plain_export(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDEPLOY_TEST_BUNDLE_CACHE", "0")
    assert bundle_cache._cache_root() is None
