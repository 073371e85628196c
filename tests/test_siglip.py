"""SigLIP family end to end on a tiny checkpoint built from its config: export (ORT + OpenVINO),
parity with SiglipModel's own features on real photos and odd images, sigmoid classification with
the learned bias, INT8 within its gate, and NaFlex refused by name."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from mmdeploy.common.datasets.photos import photo_batch  # noqa: E402
from mmdeploy.errors import UnsupportedModelError  # noqa: E402
from mmdeploy.runtimes import Bundle, load  # noqa: E402

from .tiny_families import SIGLIP_TINY, save_siglip  # noqa: E402

TEXTS = ["a photo of a cat", "an astronaut", "a cup of coffee", "A Photo Of A Dog!, on the street"]


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    from .bundle_cache import export_cached

    root = tmp_path_factory.mktemp("siglip")
    model = save_siglip(root / "ckpt")
    export_cached(
        str(root / "ckpt"),
        root / "bundle",
        backends=["onnxruntime", "openvino"],
        precisions=["fp32", "int8"],
        calib="photos",
        threads=2,
    )
    return model, root / "bundle"


def _cos(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _hf_inputs(pipe, images, texts):
    px = torch.from_numpy(pipe.preprocess(images))
    ids = torch.from_numpy(pipe.text_inputs(texts)["input_ids"])
    return px, ids


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_embeddings_match_siglip_model(siglip, backend):
    model, bundle = siglip
    pipe = load(bundle, backend=backend, precision="fp32", threads=2)
    images = photo_batch(5) + [np.zeros((7, 50, 3), np.uint8), np.full((40, 9), 200, np.uint8)]  # odd shapes, grey
    px, ids = _hf_inputs(pipe, images, TEXTS)
    assert ids.shape[1] == 16 and "attention_mask" not in pipe.text_inputs(TEXTS)  # padded to max_length, no mask
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=px).pooler_output.numpy()
        ref_txt = model.get_text_features(input_ids=ids).pooler_output.numpy()
    assert _cos(pipe.embed_images(images, normalize=False), ref_img).min() >= 0.9999
    assert _cos(pipe.embed_texts(TEXTS, normalize=False), ref_txt).min() >= 0.9999


def test_classify_is_sigmoid_with_bias_as_siglip_model(siglip):
    model, bundle = siglip
    pipe = load(bundle, backend="onnxruntime", precision="fp32", threads=2)
    images = photo_batch(3)
    labels = ["a photo of a cat", "a cup of coffee", "an astronaut"]
    got = pipe.classify_batch(images, labels)
    px, ids = _hf_inputs(pipe, images, labels)
    with torch.no_grad():
        ref = torch.sigmoid(model(input_ids=ids, pixel_values=px).logits_per_image).numpy()
    for row, want in zip(got, ref):
        d = dict(row)
        assert max(abs(d[l] - float(p)) for l, p in zip(labels, want)) <= 1e-4
    assert sum(dict(got[0]).values()) != pytest.approx(1.0, abs=1e-3)  # independent sigmoids, not a softmax


def test_manifest_and_int8_gate(siglip):
    _, bundle = siglip
    b = Bundle.open(bundle)
    assert b.family == "siglip" and b.manifest["tokenizer"]["padding"] == "max_length"
    assert [i["name"] for i in b.components["text"]["inputs"]] == ["input_ids"]
    assert b.components["text"]["inputs"][0]["shape"] == ["batch", 16]
    assert b.manifest["siglip"]["logit_bias"] == pytest.approx(-1.5)
    # INT8 of a 32-wide random tower does not keep 0.99 (measured 0.94 / 0.87 mean cosine): the gate
    # must say so honestly, and load() must not default to it
    int8 = b.find(precision="int8")
    assert {a.backend for a in int8} == {"onnxruntime", "openvino"}
    for a in int8:
        assert a.gate["passed"] == (a.parity[a.gate["metric"]] >= a.gate["min_cosine"] == 0.99)
        assert "held-out" in a.parity["reference"] and a.recipe["calibration"]["data"] == "photos"
    pipe = load(bundle)
    assert pipe.precision != "int8" or all(a.passed for a in int8 if a.backend == pipe.backend)
    emb = load(bundle, backend="onnxruntime", precision="int8").embed_texts(TEXTS)
    ref = load(bundle, backend="onnxruntime", precision="fp32").embed_texts(TEXTS)
    assert _cos(emb, ref).mean() >= 0.5  # quantized, not broken


def test_bench_runs_zero_shot_rows(siglip):
    from mmdeploy.benchmarks.bench import BenchConfig, bench

    _, bundle = siglip
    rep = bench(
        str(bundle),
        BenchConfig(backends=["onnxruntime"], precisions=["fp32"], runs=2, warmup=1, data="shapes", record=False),
        log=lambda s: None,
    )
    rows = {(r["component"], r["backend"]) for r in rep["results"]}
    assert {("vision", "pytorch"), ("text", "pytorch"), ("vision", "onnxruntime"), ("text", "onnxruntime")} <= rows
    assert {a["backend"] for a in rep["accuracy"]} >= {"pytorch", "onnxruntime"}


def test_naflex_siglip2_is_refused_by_name(tmp_path):
    from mmdeploy.exporter.export import export

    cfg = {
        "architectures": ["Siglip2Model"],
        "model_type": "siglip2",
        "text_config": {**SIGLIP_TINY["text_config"], "model_type": "siglip2_text_model"},
        "vision_config": {
            "model_type": "siglip2_vision_model",
            "num_patches": 16,
            "patch_size": 8,
            **{
                k: SIGLIP_TINY["vision_config"][k]
                for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
            },
        },
    }
    save_siglip(tmp_path / "ckpt", cfg, "Siglip2Model", "Siglip2Config")
    with pytest.raises(UnsupportedModelError, match="Siglip2Model.*NaFlex.*google/siglip2-base-patch16-224"):
        export(str(tmp_path / "ckpt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_served_classify_uses_the_sigmoid_rule(siglip):
    """`mmdeploy serve` over HTTP: /v1/classify scores are SigLIP's sigmoids, as the pipeline gives."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    import base64
    import io

    from PIL import Image

    from mmdeploy.runtimes.serve import create_app

    from .test_serve import running

    _, bundle = siglip
    labels = ["a photo of a cat", "a cup of coffee", "an astronaut"]
    img = photo_batch(1)[0]
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img)).save(buf, "PNG")
    url_img = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    want = dict(load(bundle, backend="onnxruntime", precision="fp32").classify(buf.getvalue(), labels))
    with running(create_app({"sig": bundle}, backend="onnxruntime", precision="fp32")) as (url, _):
        r = httpx.post(f"{url}/v1/classify", json={"model": "sig", "image": url_img, "labels": labels}, timeout=60)
        assert r.status_code == 200, r.text
        got = {s["label"]: s["score"] for s in r.json()["data"][0]["scores"]}
        caps = httpx.get(f"{url}/v1/models/sig", timeout=10).json()
    assert max(abs(got[l] - want[l]) for l in labels) <= 1e-4
    assert abs(sum(got.values()) - 1.0) > 1e-3  # not a softmax
    assert caps["family"] == "siglip" and "classify" in caps["capabilities"]


def test_siglip2_fixed_resolution_pads_with_its_own_pad_id(tmp_path):
    """SigLIP 2 at fixed resolution is a SiglipModel whose Gemma vocabulary pads with <pad> = 0
    (not </s> as SigLIP): the bundle pads with the checkpoint's pad id and matches the model."""
    import json

    from mmdeploy.exporter.export import export

    cfg = {**SIGLIP_TINY, "text_config": {**SIGLIP_TINY["text_config"], "pad_token_id": 0}}
    model = save_siglip(tmp_path / "ckpt", cfg)
    (tmp_path / "ckpt" / "tokenizer_config.json").write_text(
        json.dumps({"pad_token": "<pad>", "eos_token": "</s>", "model_max_length": 16})
    )
    export(str(tmp_path / "ckpt"), tmp_path / "b", backends=["onnxruntime"], precisions=["fp32"], threads=2)
    pipe = load(tmp_path / "b", threads=2)
    ids = pipe.text_inputs(["a cat"])["input_ids"]
    n = int((ids[0] != 0).sum())  # the text's own tokens, </s> last
    assert ids.shape == (1, 16) and n < 16 and (ids[0, n:] == 0).all() and ids[0, n - 1] == 1
    assert Bundle.open(tmp_path / "b").manifest["tokenizer"]["pad_id"] == 0
    with torch.no_grad():
        ref = model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
    assert _cos(pipe.embed_texts(["a cat"], normalize=False), ref).min() >= 0.9999
