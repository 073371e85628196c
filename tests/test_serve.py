"""`mmdeploy serve`: a real uvicorn server on an ephemeral 127.0.0.1 port, real HTTP.

The official `openai` client gets the runtime's own embeddings; classify and caption
round-trip; concurrent requests are batched and each gets its own answer; bad input is a
4xx JSON error and the server answers after it; the API key, queue bound, timeout and
graceful shutdown do what they say.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("orjson")
httpx = pytest.importorskip("httpx")

from mmdeploy.common.capabilities import Capability  # noqa: E402
from mmdeploy.common.datasets import shapes  # noqa: E402
from mmdeploy.errors import InputError  # noqa: E402
from mmdeploy.runtimes import load  # noqa: E402
from mmdeploy.runtimes.pipelines.pipeline import Pipeline  # noqa: E402
from mmdeploy.runtimes.serve import create_app, looks_like_base64_image, parse_bundle_args  # noqa: E402

# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def in_thread(server):
    """Run a uvicorn ``server`` in a thread on a free loopback port; yield (base URL, server, thread)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    t = time.time()
    while not server.started:
        assert th.is_alive() and time.time() - t < 60, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server, th
    finally:
        server.should_exit = True
        th.join(30)
        sock.close()


@contextmanager
def running(app, graceful_s: float = 10.0):
    """Serve ``app`` with plain uvicorn in a thread on a free loopback port; yield (base URL, server)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=graceful_s)
    )
    with in_thread(server) as (url, server, _):
        yield url, server


class FakeCaptioner(Pipeline):
    """A caption pipeline stand-in: says what it saw, records its batches."""

    capabilities = frozenset({Capability.CAPTION})

    def __init__(self, delay: float = 0.0):
        self.delay, self.batches = delay, []

    def caption(self, images, max_new_tokens=None, num_beams=None):
        self.batches.append(len(images))
        time.sleep(self.delay)
        return [f"{im.size[0]}x{im.size[1]} {im.mode} mnt={max_new_tokens} beams={num_beams}" for im in images]


def png(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels but carries almost no data (a decompression bomb's header)."""

    def chunk(tag: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + tag + d + struct.pack(">I", zlib.crc32(tag + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_error(r, status: int | tuple = (400, 499)):
    if isinstance(status, tuple):
        assert status[0] <= r.status_code <= status[1], (r.status_code, r.text)
    else:
        assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    assert {"message", "type", "code"} <= err.keys()
    return err


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", text, re.M):
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_ref(clip_bundle):
    return load(clip_bundle, backend="onnxruntime", precision="fp32")


@pytest.fixture(scope="module")
def images():
    return [s.image for s in shapes.generate("test", 24)]


@pytest.fixture(scope="module")
def served(clip_bundle):
    cap = FakeCaptioner()
    app = create_app(
        {"clip": clip_bundle, "cap": cap},
        backend="onnxruntime",
        precision="fp32",
        max_wait_ms=20,
        max_body_bytes=1_000_000,
        max_pixels=1_000_000,
        max_items=64,
    )
    with running(app) as (url, server):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield url, client, cap


# -- the API ----------------------------------------------------------------------------------------


def test_openai_client_embeddings_match_runtime(served, clip_ref, images):
    from openai import OpenAI

    url, _, _ = served
    oai = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    texts = ["a red circle", "a small blue square on a green background"]
    urls = [data_url(png(im)) for im in images[:2]]
    bare_b64 = base64.b64encode(png(images[2])).decode()  # bare base64 (no data: prefix) is an image too
    inputs = [texts[0], urls[0], texts[1], urls[1], bare_b64]
    want = [
        clip_ref.embed_texts([texts[0]])[0],
        clip_ref.embed_images([urls[0]])[0],
        clip_ref.embed_texts([texts[1]])[0],
        clip_ref.embed_images([urls[1]])[0],
        clip_ref.embed_images([png(images[2])])[0],
    ]
    got = {}
    for fmt in ("float", "base64", None):
        kw = {} if fmt is None else {"encoding_format": fmt}
        r = oai.embeddings.create(model="clip", input=inputs, **kw)
        assert [d.index for d in r.data] == list(range(len(inputs)))
        got[fmt] = []
        for d, w in zip(r.data, want):
            e = d.embedding
            v = np.frombuffer(base64.b64decode(e), "<f4") if isinstance(e, str) else np.asarray(e, np.float32)
            assert v.shape == w.shape and cos(v, w) >= 0.9999, fmt
            got[fmt].append(v)
        n_tokens = sum(min(n, clip_ref.tokenizer.max_length) for n in clip_ref.tokenizer.count_tokens(texts))
        assert r.usage.prompt_tokens == r.usage.total_tokens == n_tokens
        assert r.model == "clip"
    # float JSON carries float32's shortest repr: parsed back, bit-identical to the base64 bytes
    assert all((a == b).all() for a, b in zip(got["float"], got["base64"]))
    one = oai.embeddings.create(model="clip", input="a red circle", encoding_format="float")
    assert len(one.data) == 1 and cos(one.data[0].embedding, want[0]) >= 0.9999
    # dimensions: truncated and renormalised
    r = oai.embeddings.create(model="clip", input=texts[0], encoding_format="float", dimensions=16)
    v = np.asarray(r.data[0].embedding)
    assert v.shape == (16,) and abs(np.linalg.norm(v) - 1) < 1e-5 and cos(v, want[0][:16]) >= 0.9999
    assert [m.id for m in oai.models.list().data] == ["clip", "cap"]


def test_image_modes_are_handled_like_the_runtime(served, clip_ref, images):
    _, client, _ = served
    rgb = images[3]
    a = np.asarray(rgb)
    variants = {
        "16-bit gray": png(Image.fromarray(a[..., 0].astype(np.uint16) * 257)),
        "CMYK JPEG": png(rgb.convert("CMYK"), "JPEG"),
        "RGBA": png(
            Image.fromarray(np.dstack([a, np.linspace(0, 255, a.size // 3).reshape(a.shape[:2]).astype(np.uint8)]))
        ),
        "LA": png(rgb.convert("LA")),
        "palette + transparency": png(rgb.convert("P", palette=Image.Palette.ADAPTIVE)),
        "gray JPEG": png(rgb.convert("L"), "JPEG"),
    }
    for name, data in variants.items():
        mime = "image/jpeg" if "JPEG" in name else "image/png"
        r = client.post("/v1/embeddings", json={"model": "clip", "input": [data_url(data, mime)]})
        assert r.status_code == 200, (name, r.text)
        got = r.json()["data"][0]["embedding"]
        assert cos(got, clip_ref.embed_images([data])[0]) >= 0.9999, name


def test_classify_round_trip(served, clip_ref, images):
    _, client, _ = served
    labels = shapes.labels()[:6]
    template = "a photo of a {}"
    r = client.post(
        "/v1/classify",
        json={"model": "clip", "image": data_url(png(images[0])), "labels": labels, "template": template},
    )
    assert r.status_code == 200, r.text
    got = r.json()["data"][0]
    want = clip_ref.classify(png(images[0]), labels, template)
    assert got["label"] == want[0][0]
    assert [s["label"] for s in got["scores"]] == [l for l, _ in want]
    assert np.allclose([s["score"] for s in got["scores"]], [p for _, p in want], atol=1e-4)
    # a list of images, cached label embeddings, default template
    r = client.post(
        "/v1/classify", json={"model": "clip", "images": [data_url(png(im)) for im in images[:3]], "labels": labels}
    )
    assert r.status_code == 200, r.text
    want = clip_ref.classify_batch([png(im) for im in images[:3]], labels)
    for d, w in zip(r.json()["data"], want):
        assert d["label"] == w[0][0] and abs(d["score"] - w[0][1]) < 1e-4


def test_concurrent_requests_are_batched_and_answered_in_order(served, clip_ref, images):
    url, client, _ = served
    payloads = [png(im) for im in images]
    want = clip_ref.embed_images(payloads)
    before = client.get("/metrics").text
    results: list = [None] * len(payloads)
    barrier = threading.Barrier(len(payloads))

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            barrier.wait()
            body = {"model": "clip", "input": data_url(payloads[i]), "encoding_format": "base64"}
            r = c.post("/v1/embeddings", json=body)
            results[i] = (r.status_code, r.json())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, (status, body) in enumerate(results):
        assert status == 200, body
        v = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), "<f4")
        assert cos(v, want[i]) >= 0.9999, i
        # its own answer, not a batch-mate's
        assert cos(v, want[i]) > max(cos(v, want[j]) for j in range(len(want)) if j != i) + 1e-6
    after = client.get("/metrics").text
    lab = {"model": "clip", "component": "vision"}
    batches = metric(after, "mmdeploy_batch_size_count", **lab) - metric(before, "mmdeploy_batch_size_count", **lab)
    items = metric(after, "mmdeploy_batch_size_sum", **lab) - metric(before, "mmdeploy_batch_size_sum", **lab)
    singles = metric(after, "mmdeploy_batch_size_bucket", le="1.0", **lab) - metric(
        before, "mmdeploy_batch_size_bucket", le="1.0", **lab
    )
    assert items == len(payloads)
    assert batches < len(payloads) and singles < batches, (batches, singles)  # some batch held > 1 request
    for name in (
        "mmdeploy_requests_total",
        "mmdeploy_errors_total",
        "mmdeploy_request_latency_seconds_bucket",
        "mmdeploy_queue_depth",
        "mmdeploy_batch_latency_seconds_count",
        "process_resident_memory_bytes",
    ):
        assert name in after


def test_bad_inputs_are_4xx_json_and_the_server_lives_on(served, images):
    _, client, _ = served
    good = png(images[0])
    corrupt = good[:40] + bytes(range(256)) * 4
    full_b64 = base64.b64encode(good).decode()
    cases = [
        ("corrupt image", {"input": data_url(corrupt)}, 400),
        ("truncated base64", {"input": "data:image/png;base64," + full_b64[: len(full_b64) // 2 - 1]}, 400),
        ("truncated image", {"input": data_url(good[: len(good) // 2])}, 400),
        ("truncated bare base64", {"input": full_b64[:101]}, 400),
        ("huge dimensions", {"input": data_url(png_header(5000, 5000))}, 400),
        ("bomb dimensions", {"input": data_url(png_header(60000, 60000))}, 400),
        ("not an image data URL", {"input": "data:text/plain;base64,aGVsbG8="}, 400),
        ("input a number", {"input": 5}, 400),
        ("token arrays", {"input": [1, 2, 3]}, 400),
        ("nested lists", {"input": [["a"]]}, 400),
        ("input an object", {"input": {"a": 1}}, 400),
        ("input null", {"input": None}, 400),
        ("empty input", {"input": []}, 400),
        ("too many inputs", {"input": ["a"] * 65}, 400),
        ("model a number", {"input": "a", "model": 5}, 400),
        ("bad encoding_format", {"input": "a", "encoding_format": "xml"}, 400),
        ("bad dimensions", {"input": "a", "dimensions": "8"}, 400),
        ("too many dimensions", {"input": "a", "dimensions": 100000}, 400),
        ("unknown model", {"input": "a", "model": "nope"}, 404),
        ("image to a captioner", {"input": "a", "model": "cap"}, 400),
        ("local path when not allowed", {"input": "file:///etc/passwd"}, 400),
    ]
    for name, body, status in cases:
        body = {"model": "clip", **body}
        err = assert_error(client.post("/v1/embeddings", json=body), status)
        assert err["code"], name
    classify_cases = [
        {"image": data_url(good), "labels": "cat"},
        {"image": data_url(good), "labels": [1, 2]},
        {"image": data_url(good), "labels": ["a", "b"], "template": 5},
        {"image": data_url(good), "labels": ["a", "b"], "template": "no slot"},
        {"image": data_url(good), "labels": ["a", "b"], "template": "{x} {}"},
        {"image": 7, "labels": ["a", "b"]},
        {"image": "http://example.com/cat.png", "labels": ["a", "b"]},
        {"labels": ["a", "b"]},
        {"image": data_url(corrupt), "labels": ["a", "b"]},
        {"images": [data_url(good), data_url(corrupt)], "labels": ["a", "b"]},
    ]
    for body in classify_cases:
        assert_error(client.post("/v1/classify", json={"model": "clip", **body}), 400)
    assert_error(client.post("/v1/classify", json={"model": "cap", "image": data_url(good), "labels": ["a", "b"]}), 400)
    for body in (
        {"max_new_tokens": "5"},
        {"max_new_tokens": 0},
        {"max_new_tokens": True},
        {"num_beams": 100},
        {"images": "notbase64!!"},
        {"images": []},
    ):
        b = {"model": "cap", "image": data_url(good), **body}
        if "images" in body:
            b.pop("image")
        assert_error(client.post("/v1/caption", json=b), 400)
    assert_error(client.post("/v1/caption", json={"model": "clip", "image": data_url(good)}), 400)
    # not JSON, not an object, wrong route, wrong method
    assert_error(client.post("/v1/embeddings", content=b"{not json"), 400)
    assert_error(client.post("/v1/embeddings", content=b'["a"]'), 400)
    assert_error(client.post("/v1/embeddings", content=b"\xff\xfe\x00"), 400)
    assert_error(client.post("/v1/embeddings", content=b"[" * 100000), 400)
    assert_error(client.get("/v1/nope"), 404)
    assert_error(client.get("/v1/embeddings"), 405)
    assert_error(client.get("/v1/models/nope"), 404)
    # oversize body: announced by Content-Length, and streamed (chunked) without one
    assert_error(client.post("/v1/embeddings", content=b"x" * 1_100_000), 413)

    def chunks():
        for _ in range(20):
            yield b"y" * 100_000

    assert_error(client.post("/v1/embeddings", content=chunks()), 413)
    # the server still answers, correctly
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/v1/embeddings", json={"model": "clip", "input": ["a red circle", data_url(good)]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    m = client.get("/metrics").text
    assert metric(m, "mmdeploy_errors_total", code="invalid_image") >= 5
    assert metric(m, "mmdeploy_requests_total", status="500") == 0


def test_caption_route_with_a_duck_typed_pipeline(served, images):
    _, client, cap = served
    ims = [images[0], images[1].resize((40, 30)), images[2]]
    r = client.post(
        "/v1/caption",
        json={"model": "cap", "images": [data_url(png(im)) for im in ims], "max_new_tokens": 7, "num_beams": 2},
    )
    assert r.status_code == 200, r.text
    caps = [d["caption"] for d in r.json()["data"]]
    assert caps == [f"{im.size[0]}x{im.size[1]} RGB mnt=7 beams=2" for im in ims]
    r = client.post("/v1/caption", json={"model": "cap", "image": data_url(png(images[0]))})
    assert r.json()["data"][0]["caption"].endswith("mnt=None beams=None")
    assert max(cap.batches) >= 3  # the three images of one request ran as one batch


def test_models_health_metrics(served):
    _, client, _ = served
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert set(models["clip"]["capabilities"]) == {"text-embeddings", "image-embeddings", "classify"}
    assert models["cap"]["capabilities"] == ["caption"]
    assert client.get("/v1/models/clip").json()["id"] == "clip"
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and set(h.json()["models"]) == {"clip", "cap"}
    assert h.headers.get("x-request-id")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


# -- security and robustness -----------------------------------------------------------------------


def test_api_key_is_enforced(clip_ref):
    from openai import AuthenticationError, OpenAI

    app = create_app({"clip": clip_ref}, api_key="s3cret", warmup=False)
    with running(app) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as c:
            body = {"model": "clip", "input": "a red circle"}
            assert_error(c.post("/v1/embeddings", json=body), 401)
            assert_error(c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer wrong"}), 401)
            assert_error(c.post("/v1/embeddings", json=body, headers={"Authorization": "s3cret"}), 401)
            assert_error(c.get("/metrics"), 401)
            assert_error(c.get("/v1/models"), 401)
            assert c.get("/health").status_code == 200  # liveness probes need no key
            assert c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).embeddings.create(model="clip", input="a")
        r = OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0).embeddings.create(model="clip", input="a")
        assert len(r.data[0].embedding) == 64


def test_queue_full_is_503_with_retry_after_and_timeouts_are_504(images):
    slow = FakeCaptioner(delay=1.0)
    app = create_app({"cap": slow}, max_batch=1, max_queue=1, timeout_s=20.0)
    body = {"model": "cap", "image": data_url(png(images[0]))}
    with running(app) as (url, _):
        out: dict = {}

        def post(k: str) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                out[k] = c.post("/v1/caption", json=body)

        a = threading.Thread(target=post, args=("a",))
        a.start()
        time.sleep(0.25)  # a runs
        b = threading.Thread(target=post, args=("b",))
        b.start()
        time.sleep(0.25)  # b waits in the queue, which is now full
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/caption", json=body)
            err = assert_error(r, 503)
            assert err["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
            a.join(10)
            b.join(10)
            assert out["a"].status_code == 200 and out["b"].status_code == 200
    slow = FakeCaptioner(delay=1.0)
    app = create_app({"cap": slow}, timeout_s=0.3)
    with running(app) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as c:
            assert assert_error(c.post("/v1/caption", json=body), 504)["code"] == "timeout"
            assert c.get("/health").status_code == 200


def test_graceful_shutdown_drains_in_flight_requests(images):
    app = create_app({"cap": FakeCaptioner(delay=0.8)})
    out: dict = {}
    with running(app) as (url, server):

        def post() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                out["r"] = c.post("/v1/caption", json={"model": "cap", "image": data_url(png(images[0]))})

        t = threading.Thread(target=post)
        t.start()
        t0 = time.time()
        while app.state.server.inflight == 0 and time.time() - t0 < 10:
            time.sleep(0.01)
        time.sleep(0.1)
        server.should_exit = True  # what SIGTERM does
        t.join(10)
    assert out["r"].status_code == 200 and out["r"].json()["data"][0]["caption"].startswith("64x64")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)


# -- real captioning bundle (when the captioning pipeline is in this checkout) ----------------------------


def tiny_captioner(out):
    """A random-weight ViT + GPT-2 captioner (as in test_caption.py), saved as an HF folder."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    from tools.fixtures.caption import EOT, build_shapes_tokenizer, save_tokenizer, shapes_captions

    out.mkdir(parents=True)
    tok = build_shapes_tokenizer(shapes_captions())
    save_tokenizer(tok, out)
    eot = tok.convert_tokens_to_ids(EOT)
    enc = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    dec = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=48,
        n_layer=2,
        n_head=2,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        add_cross_attention=True,
        is_decoder=True,
        initializer_range=0.2,
    )
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = eot, eot, eot
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config=cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        '{"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32}, "do_resize": true, '
        '"do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}'
    )
    return out


@pytest.mark.slow  # a caption bundle served (the fast tier: test_serve_lifecycle's streamed captions)
def test_caption_round_trip_with_a_real_caption_bundle(tmp_path, images, request):
    if importlib.util.find_spec("mmdeploy.runtimes.pipelines.caption") is None:
        pytest.skip(
            "runtimes/caption.py (CaptionPipeline) is not in this checkout: caption routes are covered "
            "by test_caption_route_with_a_duck_typed_pipeline"
        )
    from mmdeploy.exporter.export import export
    from mmdeploy.exporter.registry import package_path

    if (package_path("fixtures/caption-shapes") / "model.safetensors").is_file():
        out = request.getfixturevalue("shapes_bundle")  # the session's caption-shapes export, not a second one
    else:
        out = tmp_path / "cap"
        export(str(tiny_captioner(tmp_path / "ckpt")), out, backends=["onnxruntime"], precisions=["fp32"], threads=2)
    pipe = load(out, backend="onnxruntime", precision="fp32")
    ims = [png(im) for im in images[:3]]
    want = pipe.caption(ims, max_new_tokens=8, num_beams=1)
    want_beam = pipe.caption(ims[:1], max_new_tokens=6, num_beams=2)
    with running(create_app({"cap": pipe})) as (url, _):
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post(
                "/v1/caption",
                json={"model": "cap", "images": [data_url(d) for d in ims], "max_new_tokens": 8, "num_beams": 1},
            )
            assert r.status_code == 200, r.text
            assert [d["caption"] for d in r.json()["data"]] == list(want)
            r = c.post(
                "/v1/caption", json={"model": "cap", "image": data_url(ims[0]), "max_new_tokens": 6, "num_beams": 2}
            )
            assert r.status_code == 200 and r.json()["data"][0]["caption"] == want_beam[0]
            assert_error(c.post("/v1/caption", json={"model": "cap", "image": data_url(ims[0][:100])}), 400)
            assert c.get("/v1/models").json()["data"][0]["capabilities"] == ["caption"]


# -- pieces ---------------------------------------------------------------------------------------


def test_input_sniffing_and_bundle_names(tmp_path, images):
    assert looks_like_base64_image(base64.b64encode(png(images[0])).decode())
    assert looks_like_base64_image(base64.b64encode(png(images[0], "JPEG")).decode())
    assert not looks_like_base64_image("a photo of a cat")
    assert not looks_like_base64_image("iVBORw0KGgo is how PNG files start")
    assert not looks_like_base64_image("aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=")  # base64, but of text
    (tmp_path / "clip").mkdir()
    assert parse_bundle_args([str(tmp_path / "clip"), f"other={tmp_path / 'clip'}"]) == {
        "clip": tmp_path / "clip",
        "other": tmp_path / "clip",
    }
    with pytest.raises(InputError):
        parse_bundle_args([str(tmp_path / "clip"), str(tmp_path / "clip")])


def test_loadgen_against_a_running_server(served):
    from mmdeploy.benchmarks.loadgen import format_report, run_loadgen

    url, _, _ = served
    rep = run_loadgen(
        url=url, model="clip", concurrency=[1, 4], requests=24, duration_s=10, warmup=2, distinct=8, log=lambda m: None
    )
    assert [l.concurrency for l in rep.levels] == [1, 4]
    assert all(l.errors == 0 and l.requests == 24 and l.p99_ms > 0 for l in rep.levels)
    assert "req/s" in format_report(rep)
    with pytest.raises(InputError, match="127.0.0.1"):
        run_loadgen(url="http://example.com:8000", log=lambda m: None)


@contextmanager
def chunked_server(chunk: int = 7):
    """A stdlib HTTP/1.1 keep-alive server whose JSON answers come in many small chunks
    (the /v1/embeddings body split every `chunk` bytes, with chunk extensions and a trailer)."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    embedding = [round(0.001 * i, 3) for i in range(64)]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, body: bytes, chunked: bool, ctype: str = "application/json"):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            if not chunked:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), chunk):
                part = body[i : i + chunk]
                self.wfile.write(f"{len(part):x};n={i}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(json.dumps({"data": [{"id": "clip"}]}).encode(), chunked=True)
            elif self.path == "/metrics":
                self._send(b"process_cpu_seconds_total 1.0\n", chunked=False, ctype="text/plain")
            else:
                self._send(b'{"status": "ok"}', chunked=False)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n = len(req["input"]) if isinstance(req["input"], list) else 1
            data = [{"object": "embedding", "index": i, "embedding": embedding} for i in range(n)]
            self._send(json.dumps({"object": "list", "data": data, "model": req["model"]}).encode(), chunked=True)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", embedding
    finally:
        srv.shutdown()
        srv.server_close()


def test_bench_serve_compares_the_server_with_the_model_alone(clip_bundle):
    """A bundle given: bench-serve starts its own server, and after each level runs the served
    variant alone at the server's mean batch (fraction reached, server CPU beyond the model)."""
    from mmdeploy.benchmarks.loadgen import format_report, run_loadgen

    rep = run_loadgen(
        str(clip_bundle), concurrency=[3], requests=30, duration_s=20, warmup=3, distinct=8, log=lambda m: None
    )
    (lvl,) = rep.levels
    assert lvl.errors == 0 and lvl.requests == 30 and lvl.mean_batch >= 1
    assert lvl.model_batch == max(1, round(lvl.mean_batch)) and lvl.model_items_per_s > 0
    assert lvl.fraction_of_model == pytest.approx(lvl.items_per_s / lvl.model_items_per_s, rel=0.01)
    assert lvl.model_cpu_ms_per_item > 0 and lvl.server_overhead_cpu_ms_per_req is not None
    assert "reached" in format_report(rep) and "model items/s" in format_report(rep)


def test_loadgen_reads_multi_chunk_bodies_intact():
    """Chunked answers (many chunks, extensions, a trailer) are read byte for byte: the old
    hand-written decoder kept each chunk's CRLF in the body, so every such response was an error."""
    import asyncio
    import json

    from mmdeploy.benchmarks.loadgen import _Conn, format_report, run_loadgen

    with chunked_server() as (url, embedding):

        async def one() -> tuple[int, bytes]:
            conn = _Conn(url, {"Content-Type": "application/json"})
            try:
                first = await conn.request(
                    "/v1/embeddings", json.dumps({"model": "clip", "input": ["a", "b"]}).encode()
                )
                second = await conn.request("/v1/embeddings", json.dumps({"model": "clip", "input": "a"}).encode())
            finally:
                await conn.aclose()
            return first, second

        (s1, b1), (s2, b2) = asyncio.run(one())  # two on one keep-alive connection
        assert s1 == s2 == 200
        assert [d["embedding"] for d in json.loads(b1)["data"]] == [embedding, embedding]
        assert len(json.loads(b2)["data"]) == 1
        rep = run_loadgen(
            url=url,
            kind="text",
            concurrency=[1, 3],
            requests=12,
            duration_s=10,
            warmup=1,
            distinct=4,
            items=2,
            log=lambda m: None,
        )
    assert all(l.errors == 0 and l.requests == 12 for l in rep.levels), [l.error_samples for l in rep.levels]
    assert rep.model == "clip" and "req/s" in format_report(rep)


def test_loadgen_without_httpx_names_the_extra(monkeypatch):
    import sys

    from mmdeploy.benchmarks.loadgen import run_loadgen
    from mmdeploy.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "httpx", None)  # importing httpx now fails
    with pytest.raises(MissingExtraError, match=r"httpx is not installed.*mmdeploy\[serve\]"):
        run_loadgen(url="http://127.0.0.1:9", log=lambda m: None)
