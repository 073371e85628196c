"""Streaming, drain and misbehaving clients against a real server (the one `mmdeploy serve` runs).

Streamed caption events join to the plain caption; a reader that leaves frees its batch
slot (a running row stops, a queued request leaves the queue); SIGTERM drains (health 503
"draining", new work 503 + Retry-After, in-flight answers complete, exit code 0); a client
that stalls in its headers or body is cut off while others are served; malformed HTTP gets a
JSON 400; /openapi.json documents the typed requests with this server's limits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from mmdeploy.common.capabilities import Capability  # noqa: E402
from mmdeploy.common.datasets import shapes  # noqa: E402
from mmdeploy.runtimes import load  # noqa: E402
from mmdeploy.runtimes.pipelines.pipeline import Pipeline  # noqa: E402
from mmdeploy.runtimes.serve import create_app  # noqa: E402
from mmdeploy.runtimes.serve.protocol import DrainingServer  # noqa: E402

from .test_serve import FakeCaptioner, assert_error, data_url, in_thread, png  # noqa: E402


def guarded(app):
    """`mmdeploy serve`'s own server (guarded protocol + drain) in a thread on a free port."""
    return in_thread(DrainingServer(app, log_level="warning", graceful_timeout_s=10))


def events(lines) -> list:
    out = []
    for line in lines:
        if line.startswith("data: "):
            d = line[6:]
            out.append(d if d == "[DONE]" else json.loads(d))
    return out


class StreamingFake(Pipeline):
    """Streams one word per 20 ms for up to 10 s (or max_new_tokens words); records when its reader made it stop."""

    capabilities = frozenset({Capability.CAPTION})

    def __init__(self):
        self.stopped = threading.Event()
        self.calls = 0

    def caption(self, images, max_new_tokens=None, num_beams=None, on_text=None):
        self.calls += 1
        texts, alive = [""] * len(images), [True] * len(images)
        for step in range(max_new_tokens or 500):  # a plain request asks for a few: it waits out the whole caption
            time.sleep(0.02)
            for i in range(len(images)):
                if alive[i]:
                    texts[i] += f"w{step} "
                    if on_text is not None and on_text(i, texts[i].strip()) is False:
                        alive[i] = False
            if not any(alive):
                self.stopped.set()
                break
        return [t.strip() for t in texts]


@pytest.fixture(scope="module")
def images():
    return [s.image for s in shapes.generate("test", 4)]


# -- streaming -----------------------------------------------------------------------------------


def test_streamed_captions_join_to_the_plain_captions(shapes_bundle, images):
    pipe = load(shapes_bundle, backend="onnxruntime", precision="fp32", threads=1)
    ims = [png(im) for im in images[:3]]
    want = pipe.caption(ims)
    want_beam = pipe.caption(ims[:1], num_beams=2)
    seen: dict[int, list[str]] = {}
    assert pipe.caption(ims, on_text=lambda i, t: seen.setdefault(i, []).append(t)) == want  # streaming changes nothing
    for i, texts in seen.items():
        assert texts[-1] == want[i] and all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts
    with guarded(create_app({"cap": pipe})) as (url, _, _):
        with httpx.Client(base_url=url, timeout=60) as c:
            with c.stream("POST", "/v1/caption", json={"images": [data_url(d) for d in ims], "stream": True}) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                evs = events(r.iter_lines())
            assert evs[-1] == "[DONE]"
            for i, cap in enumerate(want):
                deltas = [e["delta"] for e in evs[:-1] if e["index"] == i and "delta" in e]
                finals = [e for e in evs[:-1] if e["index"] == i and "caption" in e]
                assert "".join(deltas) == cap and finals == [{"index": i, "caption": cap, "finish_reason": "stop"}]
            assert max(len([e for e in evs[:-1] if e["index"] == i and "delta" in e]) for i in range(3)) >= 2  # pieces
            with c.stream("POST", "/v1/caption", json={"image": data_url(ims[0]), "num_beams": 2, "stream": True}) as r:
                evs = events(r.iter_lines())
            assert "".join(e.get("delta", "") for e in evs[:-1]) == want_beam[0]
            # bad input is still a plain 400 before any event
            assert_error(c.post("/v1/caption", json={"image": data_url(ims[0][:60]), "stream": True}), 400)


def test_a_reader_that_leaves_frees_its_batch_slot(images):
    fake = StreamingFake()
    app = create_app({"cap": fake}, max_batch=1, warmup=False)
    body = {"image": data_url(png(images[0])), "stream": True}
    with guarded(app) as (url, _, _):
        srv = app.state.server
        with httpx.Client(base_url=url, timeout=30) as a, httpx.Client(base_url=url, timeout=30) as b:
            with a.stream("POST", "/v1/caption", json=body) as ra:
                lines = ra.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert json.loads(first[6:])["delta"]
                # a second stream queues behind the first (max_batch 1), then its reader leaves too
                with b.stream("POST", "/v1/caption", json=body) as rb:
                    t = time.time()
                    while srv.models["cap"].batchers["caption"].depth == 0 and time.time() - t < 60:
                        time.sleep(0.01)
                    assert srv.models["cap"].batchers["caption"].depth == 1
                    rb.close()
                t = time.time()
                while srv.models["cap"].batchers["caption"].depth and time.time() - t < 60:
                    time.sleep(0.01)
                assert srv.models["cap"].batchers["caption"].depth == 0  # the queued one left its queue
                ra.close()
            assert fake.stopped.wait(60), "the running caption did not stop when its reader left"
            assert fake.calls == 1  # the queued request never ran
            assert a.get("/health").json()["status"] == "ok"
            fake2 = a.post("/v1/caption", json={"image": body["image"], "stream": False, "max_new_tokens": 5})
            assert fake2.status_code == 200
            t = time.time()
            while srv.working and time.time() - t < 60:
                time.sleep(0.01)
            assert srv.working == 0 and srv.inflight <= 1


# -- drain -------------------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_then_stops(images):
    app = create_app({"cap": FakeCaptioner(delay=1.5)}, warmup=False)
    body = {"image": data_url(png(images[0]))}
    out: dict = {}
    with guarded(app) as (url, server, th):
        srv = app.state.server

        def post():
            with httpx.Client(base_url=url, timeout=30) as c:
                out["slow"] = c.post("/v1/caption", json=body)

        t = threading.Thread(target=post)
        t.start()
        t0 = time.time()
        while srv.working == 0 and time.time() - t0 < 10:
            time.sleep(0.01)
        server.handle_exit(signal.SIGTERM, None)  # what the signal handler runs
        with httpx.Client(base_url=url, timeout=10) as c:
            h = c.get("/health")
            assert h.status_code == 503 and h.json()["status"] == "draining"
            r = c.post("/v1/caption", json=body)
            assert assert_error(r, 503)["code"] == "draining" and r.headers["retry-after"] == "1"
        t.join(10)
        th.join(15)
        assert not th.is_alive(), "the server did not stop after the drain"
    assert out["slow"].status_code == 200 and out["slow"].json()["data"][0]["caption"].startswith("64x64")


def test_mmdeploy_serve_exits_0_after_sigterm_under_load(clip_bundle, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the child's JSON request logs go to a file: a pipe nobody reads fills up and blocks the server
    log_path = tmp_path / "serve.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mmdeploy.cli",
            "serve",
            str(clip_bundle),
            "--port",
            str(port),
            "--backend",
            "onnxruntime",
            "--precision",
            "fp32",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        t = time.time()
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() - t < 90, "server did not come up"
            time.sleep(0.2)
        codes: list[int] = []
        stop = threading.Event()

        def load_():
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    try:
                        codes.append(c.post("/v1/embeddings", json={"input": ["a red circle"] * 8}).status_code)
                    except httpx.TransportError:
                        codes.append(-1)  # the listener closed after the drain
                        return

        workers = [threading.Thread(target=load_) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        stop.set()
        for w in workers:
            w.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
    log = log_path.read_text()
    assert rc == 0, log[-2000:]
    assert codes.count(200) > 4 and set(codes) <= {200, 503, -1}, sorted(set(codes))
    assert '"event": "drain"' in log and '"event": "shutdown"' in log


# -- misbehaving clients ----------------------------------------------------------------------------


def test_stalled_clients_are_cut_off_while_others_are_served(images):
    app = create_app({"cap": FakeCaptioner()}, header_timeout_s=0.5, body_timeout_s=0.5, warmup=False)
    with guarded(app) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        heads = socket.create_connection(("127.0.0.1", port))
        heads.sendall(b"POST /v1/caption HTTP/1.1\r\nHost: x\r\n")  # ... and the rest of the headers never come
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(
            b'POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"im'
        )
        silent = socket.create_connection(("127.0.0.1", port))  # connects, says nothing
        with httpx.Client(base_url=url, timeout=10) as c:  # others are served meanwhile
            assert c.post("/v1/caption", json={"image": data_url(png(images[0]))}).status_code == 200
        for s, status, code in (
            (heads, 408, "header_timeout"),
            (body, 408, "body_timeout"),
            (silent, 408, "header_timeout"),
        ):
            s.settimeout(5)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break  # the server closed the socket
                got += chunk
            head, _, payload = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d" % status), got
            assert json.loads(payload)["error"]["code"] == code
            s.close()
        bad = socket.create_connection(("127.0.0.1", port))
        bad.sendall(b"GARBAGE\x00 / HTTP/9\r\n\r\n")
        bad.settimeout(5)
        got = bad.recv(65536)
        head, _, payload = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
        assert json.loads(payload)["error"]["code"] == "bad_request"
        bad.close()


def test_openapi_documents_typed_requests_with_this_servers_limits(clip_bundle):
    app = create_app({"cap": FakeCaptioner()}, max_items=7, max_beams=3, warmup=False)
    with guarded(app) as (url, _, _):
        doc = httpx.get(url + "/openapi.json", timeout=10).json()
        assert httpx.get(url + "/docs", timeout=10).status_code == 200
    schemas = doc["components"]["schemas"]
    cap = schemas["CaptionRequest"]["properties"]
    assert {"image", "images", "max_new_tokens", "num_beams", "stream", "model"} <= set(cap)
    assert '"maximum": 3' in json.dumps(cap["num_beams"]) and '"maxItems": 7' in json.dumps(cap["images"])
    assert set(doc["paths"]) >= {"/v1/embeddings", "/v1/classify", "/v1/caption", "/v1/models"}
    post = doc["paths"]["/v1/caption"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CaptionRequest")
    assert "400" in post["responses"] and "ErrorResponse" in json.dumps(post["responses"]["400"])
