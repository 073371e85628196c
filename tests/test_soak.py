"""Soak and chaos: one real `mmdeploy serve` process under mixed load, talking only to 127.0.0.1.

The server (a subprocess: real uvicorn on a free loopback port) serves three tiny bundles built
here: SigLIP embeddings (text and image), a ViT-GPT2 captioner and a SmolVLM chat model. For
MMDEPLOY_SOAK_SECONDS (default 45) threads send embeddings, captions and chat completions
(streamed and not, hundreds of distinct multi-turn conversations), clients leave mid-stream or
before their answer, and others send garbage (invalid JSON, wrong types, bodies over the limit,
bad base64, truncated images, image bombs, malformed HTTP). Meanwhile the embedding bundle is
quantized into and then re-exported in place from other weights.

Asserted: no 5xx ever; the server's RSS and open file descriptors stay flat after warm-up; the
chat cache (its /metrics gauge) stays within --chat-cache-mb; every answer under load equals the
same request sent alone afterwards; while the bundle is rewritten every answer comes wholly from
the old bundle or wholly from the new one. The figures go to soak.json and stdout (-rA shows them).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from mmdeploy.common.datasets import shapes  # noqa: E402

SOAK_S = float(os.environ.get("MMDEPLOY_SOAK_SECONDS", "45"))
# distinct multi-turn conversations the soak phase runs at least (it goes on past SOAK_S until they are
# done: a count of work, not of speed, so a busy machine takes longer instead of failing)
CONVERSATIONS = max(200, int(SOAK_S * 4))
HARD_STOP_S = 900  # past SOAK_S: a machine this slow fails the conversation count, it does not hang
CHAT_CACHE_MB = 1.0  # small, so hundreds of conversations pass through it and the oldest are evicted
MAX_BODY_MB = 1.0
# flatness bounds after warm-up: room for allocator noise and the chat cache filling, not for a leak
# that grows with requests (thousands of them here)
RSS_SLACK_MB = 48.0
# and what serving holds beyond the loaded models at boot (thread pools, allocator arenas, caches) is
# bounded too, so memory a warm-up already filled cannot hide: the chat cache plus this
RSS_SERVING_MB = 160.0
FD_SLACK = 8
EMB_TOL = 1e-5  # an embedding batched with others vs alone: float rounding of a different GEMM shape only
TEXTS = [
    "a photo of a cat",
    "a photo of a dog",
    "a cup of coffee",
    "a rocket on the launch pad",
    "a horse running in a meadow",
    "a red car parked on the street",
    "two people talking",
    "chelsea the cat",
    "an astronaut in a white suit",
    "coffee, beans, and a mug.",
]
# words the tiny VLM tokenizer knows (tests/test_vlm.py): conversations are made of them
VLM_WORDS = (
    "what is in the picture image color shape a red blue green circle square describe it of and yes no how many"
).split()


# -- helpers ----------------------------------------------------------------------------------------


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_figures(pid: int) -> tuple[float, int, int]:
    """(VmRSS in MB, open file descriptors, threads) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", text, re.M):
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def sse_lines(r) -> list:
    return [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ") and x != "data: [DONE]"]


def answer_of(kind: str, status: int, body) -> object:
    """The comparable part of a 200 answer: vectors, ranked labels and scores, captions or the chat text."""
    if kind == "emb":
        return [np.asarray(d["embedding"], np.float32) for d in body["data"]]
    if kind == "cls":
        return [[(s["label"], s["score"]) for s in d["scores"]] for d in body["data"]]
    if kind == "cap":
        return [d["caption"] for d in body["data"]]
    return body["choices"][0]["message"]["content"]


def same_answer(kind: str, a, b) -> bool:
    if kind == "emb":
        return len(a) == len(b) and all(x.shape == y.shape and np.abs(x - y).max() <= EMB_TOL for x, y in zip(a, b))
    if kind == "cls":  # the same ranking, scores within float rounding
        return [[n for n, _ in x] for x in a] == [[n for n, _ in x] for x in b] and all(
            abs(p - q) <= EMB_TOL for x, y in zip(a, b) for (_, p), (_, q) in zip(x, y)
        )
    return a == b


def mmdeploy(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmdeploy.cli", *args], capture_output=True, text=True, timeout=timeout
    )


# -- the bundles and the server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def soak_bundles(tmp_path_factory):
    """Tiny SigLIP (OpenVINO; and other weights of it, for the re-export), captioner and VLM (onnxruntime), fp32."""
    from transformers import SiglipModel

    from .bundle_cache import export_cached
    from .test_serve import tiny_captioner
    from .test_vlm import tiny_smolvlm
    from .tiny_families import save_siglip

    root = tmp_path_factory.mktemp("soak")
    save_siglip(root / "siglip-a")
    shutil.copytree(root / "siglip-a", root / "siglip-b")
    other = SiglipModel.from_pretrained(str(root / "siglip-b")).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # other weights, same shapes and tokenizer: answers that differ visibly
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    other.save_pretrained(str(root / "siglip-b"))
    tiny_captioner(root / "cap-ckpt")
    tiny_smolvlm(root / "vlm-ckpt")
    out = {}
    # the embedding bundle on OpenVINO: its IR weights are mapped from the file the rewrite replaces
    for name, src, backend in (
        ("emb", "siglip-a", "openvino"),
        ("cap", "cap-ckpt", "onnxruntime"),
        ("vlm", "vlm-ckpt", "onnxruntime"),
    ):
        export_cached(str(root / src), root / name, backends=[backend], precisions=["fp32"], threads=1)
        out[name] = root / name
    out["emb_next"] = root / "siglip-b"
    out["root"] = root
    return out


class Server:
    """`mmdeploy serve` in a subprocess on a free loopback port, its log in a file."""

    def __init__(self, bundles: dict, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mmdeploy.cli",
                "serve",
                *(f"{n}={bundles[n]}" for n in ("emb", "cap", "vlm")),
                "--port",
                str(self.port),
                "--threads",
                "1",
                "--chat-cache-mb",
                str(CHAT_CACHE_MB),
                "--max-body-mb",
                str(MAX_BODY_MB),
                "--max-pixels",
                "4000000",
                "--log-level",
                "warning",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        t = time.time()
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() - t < 180, "server did not come up:\n" + self.log()
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def figures(self) -> tuple[float, int, int]:
        return proc_figures(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


# -- the load -------------------------------------------------------------------------------------


class Pools:
    """Inputs the clients draw from: images as data URLs, texts, conversation openers."""

    def __init__(self):
        ims = [s.image for s in shapes.generate("test", 8)]
        rng = np.random.default_rng(0)
        ims += [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(4)]
        self.pngs = [png(im) for im in ims]
        self.images = [data_url(p) for p in self.pngs]
        self.small = [data_url(png(im.resize((32, 32)))) for im in ims[:6]]  # cheap chat images
        # 2000 x 2000 gradients: a few KB of PNG, 12 MB decoded (what a chat cache holds must be counted)
        y, x = np.mgrid[0:2000, 0:2000]
        self.big = [data_url(png(Image.fromarray(np.dstack([x + k, y, x + y + k]).astype(np.uint8)))) for k in range(3)]
        r = random.Random(0)
        self.emb_bodies = sorted({json.dumps(_embed_body(r, self)) for _ in range(40)})
        self.cap_bodies = sorted({json.dumps(_caption_body(r, self)) for _ in range(24)})
        self.cls_bodies = sorted(
            {
                json.dumps(
                    {"model": "emb", "images": r.sample(self.images, r.randint(1, 2)), "labels": r.sample(TEXTS, 3)}
                )
                for _ in range(12)
            }
        )

    def conversation(self, i: int) -> list[str]:
        """The user turns of conversation i: its first turn unique to i (its words spell i)."""
        n = len(VLM_WORDS)
        spell = [VLM_WORDS[(i // n**k) % n] for k in range(3)]
        return [
            "describe " + " ".join(spell) + " ?",
            "what color is it ?",
            "how many " + VLM_WORDS[i % n] + " are there ?",
        ]


def embed_body(rng: random.Random, pools: Pools) -> dict:
    """One of a fixed set of requests (each sent many times, batched with different company each time:
    and the replay afterwards stays short)."""
    return json.loads(rng.choice(pools.emb_bodies))


def caption_body(rng: random.Random, pools: Pools) -> dict:
    return json.loads(rng.choice(pools.cap_bodies))


def _embed_body(rng: random.Random, pools: Pools) -> dict:
    kind = rng.random()
    if kind < 0.4:
        inputs = rng.sample(TEXTS, rng.randint(1, 4))
    elif kind < 0.7:
        inputs = rng.sample(pools.images, rng.randint(1, 2))
    else:  # text and image in one request: all its vectors must come from one bundle
        inputs = [rng.choice(TEXTS), rng.choice(pools.images), rng.choice(TEXTS)]
    return {"model": "emb", "input": inputs, "encoding_format": "float"}


def _caption_body(rng: random.Random, pools: Pools) -> dict:
    return {
        "model": "cap",
        "images": rng.sample(pools.images, rng.randint(1, 2)),
        "max_new_tokens": rng.choice([4, 8]),
        "num_beams": rng.choice([1, 1, 2]),
    }


def chat_messages(turns: list[str], answers: list[str], image: str | None) -> list[dict]:
    msgs: list[dict] = []
    for k, text in enumerate(turns):
        if k == 0 and image is not None:
            content: object = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": text}]
        else:
            content = text
        msgs.append({"role": "user", "content": content})
        if k < len(answers):
            msgs.append({"role": "assistant", "content": answers[k]})
    return msgs


def garbage(rng: random.Random, pools: Pools) -> tuple[str, dict]:
    """One bad request: (what it is, kwargs for httpx's request)."""
    good = pools.pngs[rng.randrange(len(pools.pngs))]
    bomb = _png_header(60_000, 60_000)
    cases = [
        ("invalid json", {"url": "/v1/embeddings", "content": b'{"model": "emb", "input": [', "method": "POST"}),
        ("not an object", {"url": "/v1/caption", "content": b"[1, 2, 3]", "method": "POST"}),
        ("wrong type input", {"url": "/v1/embeddings", "json": {"model": "emb", "input": 5}, "method": "POST"}),
        ("wrong type items", {"url": "/v1/embeddings", "json": {"model": "emb", "input": [1, None]}, "method": "POST"}),
        ("wrong type images", {"url": "/v1/caption", "json": {"model": "cap", "images": {"a": 1}}, "method": "POST"}),
        ("wrong type messages", {"url": "/v1/chat/completions", "json": {"model": "vlm", "messages": "hi"}, "method": "POST"}),
        ("negative tokens", {"url": "/v1/caption", "json": {"model": "cap", "image": pools.images[0], "max_new_tokens": -3}, "method": "POST"}),
        ("unknown model", {"url": "/v1/embeddings", "json": {"model": "nope", "input": "x"}, "method": "POST"}),
        ("wrong model kind", {"url": "/v1/caption", "json": {"model": "emb", "image": pools.images[0]}, "method": "POST"}),
        ("wrong method", {"url": "/v1/embeddings", "method": "GET"}),
        ("unknown route", {"url": "/v1/nothing", "json": {}, "method": "POST"}),
        ("huge body", {"url": "/v1/embeddings", "json": {"model": "emb", "input": ["x" * (int(MAX_BODY_MB * 2**20) + 1000)]}, "method": "POST"}),
        ("huge chunked body", {"url": "/v1/caption", "content": iter([b'{"images": ["'] + [b"A" * 65536] * 20 + [b'"]}']), "method": "POST"}),
        ("bad base64", {"url": "/v1/embeddings", "json": {"model": "emb", "input": ["data:image/png;base64,@@not base64!!"]}, "method": "POST"}),
        ("truncated png", {"url": "/v1/caption", "json": {"model": "cap", "image": data_url(good[: len(good) // 2])}, "method": "POST"}),
        ("truncated chat image", {"url": "/v1/chat/completions", "json": {"model": "vlm", "messages": chat_messages(["describe it"], [], data_url(good[:60]))}, "method": "POST"}),
        ("image bomb", {"url": "/v1/embeddings", "json": {"model": "emb", "input": [data_url(bomb)]}, "method": "POST"}),
        ("empty chat", {"url": "/v1/chat/completions", "json": {"model": "vlm", "messages": []}, "method": "POST"}),
        ("chat too long", {"url": "/v1/chat/completions", "json": {"model": "vlm", "messages": [{"role": "user", "content": "what " * 400}]}, "method": "POST"}),
        ("deep json", {"url": "/v1/embeddings", "content": b"[" * 100_000 + b"]" * 100_000, "method": "POST"}),
    ]  # fmt: skip
    return cases[rng.randrange(len(cases))]


def _png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(tag: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + tag + d + struct.pack(">I", zlib.crc32(tag + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


RAW_GARBAGE = [  # (bytes, answered): a body cut short by a client that then hangs up gets no answer
    (b"GARBAGE\x00 / HTTP/9\r\n\r\n", True),
    (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", True),
    (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{", False),
]  # fmt: skip


class Soak:
    """Runs the clients, records every status and every valid answer."""

    def __init__(self, url: str, pools: Pools, deadline: float, conversations: int = 0, first: int = 0):
        self.url, self.pools, self.deadline = url, pools, deadline
        self.target = first + conversations  # keep going past the deadline until these are under way
        self.busy: list[threading.Thread] = []  # ... and while these run (the bundle's rewrites)
        self.statuses: list[tuple[str, int]] = []  # (kind, status) of every HTTP answer
        self.answers: list[tuple[str, dict, object, float]] = []  # (kind, body, answer, time) of every 200
        self.conversations = 0
        self.left = 0  # clients that went away mid-stream or before their answer
        self.failures: list[str] = []  # client-side surprises (bad bodies, broken streams)
        self._next_conv = first
        self.chat_bodies: list[dict] = []  # answered chat requests (some are sent again)
        self.openers: list[tuple[str, str, str | None]] = []  # (first turn, its answer, image): to branch from
        self._lock = threading.Lock()

    def alive(self) -> bool:
        now = time.time()
        pending = self._next_conv < self.target or any(t.is_alive() for t in self.busy)
        return now < self.deadline or (pending and now < self.deadline + HARD_STOP_S)

    def record(self, kind: str, r) -> None:
        self.statuses.append((kind, r.status_code))

    def keep(self, kind: str, body: dict, r) -> None:
        """A valid request's answer, kept for the replay; any other status is a failure."""
        if r.status_code == 200:
            self.answers.append((kind, body, answer_of(kind, 200, r.json()), time.time()))
        else:
            self.failures.append(f"{kind}: {r.status_code} {r.text[:300]}")

    def _guard(self, fn, seed: int):
        def run():
            rng = random.Random(seed)
            with httpx.Client(base_url=self.url, timeout=120) as c:
                while self.alive():
                    try:
                        fn(c, rng)
                    except Exception as exc:  # noqa: BLE001 - recorded, asserted empty by the test
                        self.failures.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
                        time.sleep(0.2)

        return threading.Thread(target=run, name=fn.__name__, daemon=True)

    def embed(self, c, rng):
        if rng.random() < 0.2:  # zero-shot classification: label embeddings cached by the server
            body = json.loads(rng.choice(self.pools.cls_bodies))
            r = c.post("/v1/classify", json=body)
            self.record("cls", r)
            self.keep("cls", body, r)
            return
        body = embed_body(rng, self.pools)
        r = c.post("/v1/embeddings", json=body)
        self.record("emb", r)
        self.keep("emb", body, r)

    def caption(self, c, rng):
        body = caption_body(rng, self.pools)
        if rng.random() < 0.4:
            with c.stream("POST", "/v1/caption", json={**body, "stream": True}) as r:
                self.record("cap", r)
                if r.status_code != 200:
                    r.read()
                    self.failures.append(f"caption: {r.status_code} {r.text[:300]}")
                    return
                evs = sse_lines(r)
            caps = [
                next(e["caption"] for e in evs if e.get("index") == i and "caption" in e)
                for i in range(len(body["images"]))
            ]
            for i, cap in enumerate(caps):  # the deltas join to the final caption
                if "".join(e.get("delta", "") for e in evs if e.get("index") == i) != cap:
                    self.failures.append(f"caption deltas do not join to {cap!r}")
            self.answers.append(("cap", body, caps, time.time()))
            return
        r = c.post("/v1/caption", json=body)
        self.record("cap", r)
        self.keep("cap", body, r)

    def chat(self, c, rng):
        """One whole new conversation (two or three turns, each request carrying the history); or a
        branch of an answered one (its first turn and answer, then another question); or a request
        sent again while others run (the same conversation continued twice at once)."""
        roll = rng.random()
        if roll < 0.1 and self.chat_bodies:
            self._chat_turn(c, rng, rng.choice(self.chat_bodies[-40:]))
            return
        if roll < 0.25 and self.openers:
            turn, answer, image = rng.choice(self.openers[-40:])
            other = rng.choice(["what shape is it ?", "is it red ?", "how many are there ?", "describe it"])
            body = {"model": "vlm", "messages": chat_messages([turn, other], [answer], image), "max_tokens": 5}
            self._chat_turn(c, rng, body)
            return
        with self._lock:
            i = self._next_conv
            self._next_conv += 1
        turns = self.pools.conversation(i)[: rng.choice([2, 3])]
        roll = rng.random()
        image = rng.choice(self.pools.big) if roll < 0.1 else rng.choice(self.pools.small) if roll < 0.7 else None
        answers: list[str] = []
        for k in range(len(turns)):
            if not self.alive():
                return
            body = {"model": "vlm", "messages": chat_messages(turns[: k + 1], answers, image), "max_tokens": 5}
            if rng.random() < 0.2:  # sampled, seeded: reproducible too
                body.update(temperature=0.9, seed=rng.randrange(1000))
            text = self._chat_turn(c, rng, body)
            if text is None:
                return
            answers.append(text)
            if k == 0:
                self.openers.append((turns[0], text, image))
        self.conversations += 1

    def _chat_turn(self, c, rng, body: dict) -> str | None:
        """One chat request, streamed or not: the answer's text (None when it failed)."""
        if rng.random() < 0.4:
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                self.record("chat", r)
                if r.status_code != 200:
                    r.read()
                    self.failures.append(f"chat: {r.status_code} {r.text[:300]}")
                    return None
                evs = sse_lines(r)
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in evs if e.get("choices"))
            if not evs or evs[-1]["choices"][0]["finish_reason"] not in ("stop", "length"):
                self.failures.append(f"chat stream ended without a finish reason: {evs[-1:]}")
        else:
            r = c.post("/v1/chat/completions", json=body)
            self.record("chat", r)
            if r.status_code != 200:
                self.failures.append(f"chat: {r.status_code} {r.text[:300]}")
                return None
            text = answer_of("chat", 200, r.json())
        self.answers.append(("chat", body, text, time.time()))
        self.chat_bodies.append(body)
        return text

    def leaver(self, c, rng):
        """Reads the first event of a stream and goes away, or sends a request and hangs up."""
        what = rng.random()
        if what < 0.6:
            if rng.random() < 0.5:
                body = {**caption_body(rng, self.pools), "max_new_tokens": 16, "stream": True}
                path = "/v1/caption"
            else:
                body = {
                    "model": "vlm",
                    "messages": chat_messages(["describe the picture"], [], rng.choice(self.pools.small)),
                    "max_tokens": 20,
                    "stream": True,
                }
                path = "/v1/chat/completions"
            with c.stream("POST", path, json=body) as r:
                self.record("leaver", r)
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        break  # ... and the client closes the stream here
        else:  # the whole request sent, the socket closed before the answer
            payload = json.dumps(caption_body(rng, self.pools) if what < 0.8 else embed_body(rng, self.pools)).encode()
            path = b"/v1/caption" if what < 0.8 else b"/v1/embeddings"
            with socket.create_connection(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), timeout=10) as s:
                s.sendall(
                    b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % (path, len(payload))
                    + payload
                )
                time.sleep(rng.random() * 0.05)
        self.left += 1
        time.sleep(0.05)

    def vandal(self, c, rng):
        if rng.random() < 0.1:
            raw, answered = rng.choice(RAW_GARBAGE)
            with socket.create_connection(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), timeout=15) as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            m = re.match(rb"HTTP/1.1 (\d+)", got)
            if m or answered:
                self.statuses.append(("garbage", int(m.group(1)) if m else -1))
            return
        what, req = garbage(rng, self.pools)
        try:
            r = c.request(**req)
        except httpx.TransportError:  # the server may close on a body over the limit before reading it all
            if not what.startswith("huge"):
                raise
            return
        self.record("garbage", r)
        if not 400 <= r.status_code < 500:
            self.failures.append(f"garbage {what!r}: {r.status_code} {r.text[:200]}")
        elif not r.headers.get("content-type", "").startswith("application/json"):
            self.failures.append(f"garbage {what!r}: {r.status_code} is not JSON: {r.text[:200]}")
        time.sleep(0.02)

    def threads(self) -> list[threading.Thread]:
        plan = [(self.embed, 2), (self.caption, 1), (self.chat, 3), (self.leaver, 1), (self.vandal, 1)]
        out, seed = [], 0
        for fn, n in plan:
            for _ in range(n):
                seed += 1
                out.append(self._guard(fn, seed))
        return out


def replay(url: str, answers: list) -> dict[str, object]:
    """Each distinct valid request sent alone, one at a time: its answer."""
    alone: dict[str, object] = {}
    with httpx.Client(base_url=url, timeout=120) as c:
        for kind, body, _, _ in answers:
            key = json.dumps(body, sort_keys=True)
            if key in alone:
                continue
            path = {
                "emb": "/v1/embeddings",
                "cls": "/v1/classify",
                "cap": "/v1/caption",
                "chat": "/v1/chat/completions",
            }[kind]
            r = c.post(path, json=body)
            assert r.status_code == 200, (kind, body, r.text)
            alone[key] = answer_of(kind, 200, r.json())
    return alone


# -- the soak ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def soak(soak_bundles, tmp_path_factory):
    from mmdeploy.runtimes import load
    from mmdeploy.runtimes.bundle import Bundle

    b = soak_bundles
    work = tmp_path_factory.mktemp("soak-run")
    srv = Server(b, work / "serve.log")
    rss_boot = srv.figures()[0]
    pools = Pools()
    try:
        # warm-up: every kind of request a few times, so the first allocations are behind us
        warm = Soak(srv.url, pools, time.time() + max(6.0, SOAK_S * 0.15))
        ths = warm.threads()
        for t in ths:
            t.start()
        for t in ths:
            t.join(300)
        time.sleep(1.0)
        rss0, fd0, th0 = srv.figures()
        # the soak, with the embedding bundle quantized into and then re-exported in place meanwhile
        t0 = time.time()
        # every conversation distinct across the two phases
        run = Soak(srv.url, pools, t0 + SOAK_S, CONVERSATIONS, first=warm._next_conv)
        rewrites: list[tuple[str, subprocess.CompletedProcess, float, float]] = []

        def rewrite():
            time.sleep(SOAK_S * 0.1)
            for what, args in (
                ("quantize", ("quantize", str(b["emb"]), "--precision", "int8", "--mode", "dynamic", "--threads", "1")),
                ("quantize", ("quantize", str(b["emb"]), "--backend", "openvino", "--precision", "fp16", "--threads", "1")),
                ("export", ("export", str(b["emb_next"]), "-o", str(b["emb"]), "--backend", "openvino",
                            "--precision", "fp32", "--threads", "1")),
            ):  # fmt: skip
                start = time.time()
                rewrites.append((what, mmdeploy(*args), start, time.time()))

        rewriter = threading.Thread(target=rewrite, daemon=True)
        run.busy.append(rewriter)
        ths = run.threads()
        samples: list[tuple[float, float, int, float]] = []  # (t, rss MB, fds, chat cache MB)
        for t in [*ths, rewriter]:
            t.start()
        while any(t.is_alive() for t in ths):
            rss, fds, _ = srv.figures()
            text = httpx.get(srv.url + "/metrics", timeout=30).text
            samples.append((time.time() - t0, rss, fds, metric(text, "mmdeploy_chat_cache_bytes", model="vlm") / 1e6))
            time.sleep(0.5)
        for t in ths:
            t.join(300)
        rewriter.join(600)
        duration = time.time() - t0
        time.sleep(2.0)  # closed connections and finished streams settle
        rss1, fd1, th1 = srv.figures()
        metrics_text = httpx.get(srv.url + "/metrics", timeout=30).text
        idle = httpx.get(srv.url + "/health", timeout=30).json()  # nothing left running or queued
        # the same requests sent alone, one at a time, to the same server
        t1 = time.time()
        alone = replay(srv.url, warm.answers + run.answers)
        replay_s = time.time() - t1
        rss2, fd2, _ = srv.figures()
        health = httpx.get(srv.url + "/health", timeout=30)
    finally:
        rc = srv.stop()
    # what the re-exported bundle answers, loaded here: an answer under load is the old one or this
    new_pipe = load(b["emb"], backend="openvino", precision="fp32", threads=1)
    statuses = warm.statuses + run.statuses
    figures = {
        "soak_seconds_asked": SOAK_S,
        "duration_s": round(duration, 1),
        "replay_s": round(replay_s, 1),
        "requests": len(statuses),
        "requests_soak_phase": len(run.statuses),
        "by_kind": {k: sum(1 for kk, _ in statuses if kk == k) for k in sorted({k for k, _ in statuses})},
        "status_counts": {str(s): sum(1 for _, ss in statuses if ss == s) for s in sorted({s for _, s in statuses})},
        "valid_answers": len(warm.answers) + len(run.answers),
        "distinct_requests_replayed": len(alone),
        "conversations": warm.conversations + run.conversations,
        "conversations_soak_phase": run.conversations,
        "clients_that_left": warm.left + run.left,
        "5xx": sum(1 for _, s in statuses if s >= 500),
        "rss_mb_boot": round(rss_boot, 1),
        "rss_mb_start": round(rss0, 1),
        "rss_mb_end": round(rss1, 1),
        "rss_mb_max": round(max(s[1] for s in samples), 1),
        "rss_mb_after_replay": round(rss2, 1),
        # the lowest sample once the last rewrite is done (requests alone from there; a transient peak
        # does not loosen the bound); None: the rewrites outlasted the requests
        "rss_mb_after_rewrites": min(
            (round(r, 1) for t, r, *_ in samples if rewrites and t >= rewrites[-1][3] - t0), default=None
        ),
        "seconds_after_rewrites": round(duration - (rewrites[-1][3] - t0), 1) if rewrites else None,
        "fds_start": fd0,
        "fds_end": fd1,
        "fds_max": max(s[2] for s in samples),
        "threads_start": th0,
        "threads_end": th1,
        "inflight_end": idle["inflight"] - 1,  # (less the /health request itself)
        "queued_end": sum(q for m in idle["models"].values() for q in m["queue"].values()),
        "chat_cache_mb_limit": CHAT_CACHE_MB,
        "chat_cache_mb_max": round(max(s[3] for s in samples), 3),
        "chat_cache_mb_end": round(metric(metrics_text, "mmdeploy_chat_cache_bytes", model="vlm") / 1e6, 3),
        "rewrites": [{"command": w, "rc": p.returncode, "at_s": round(a - t0, 1), "took_s": round(z - a, 1)} for w, p, a, z in rewrites],
        "server_exit_code": rc,
    }  # fmt: skip
    (work / "soak.json").write_text(json.dumps(figures, indent=2))
    if os.environ.get("MMDEPLOY_SOAK_JSON"):
        Path(os.environ["MMDEPLOY_SOAK_JSON"]).write_text(json.dumps(figures, indent=2))
    return {
        "figures": figures,
        "path": work / "soak.json",
        "answers": warm.answers + run.answers,
        "statuses": statuses,
        "failures": warm.failures + run.failures,
        "alone": alone,
        "rewrites": rewrites,
        "new_pipe": new_pipe,
        "bundle": Bundle.open(b["emb"]),
        "health": health.status_code,
        "log": srv.log_path.read_text(),
        "t_rewrite": rewrites[-1][3] if rewrites else None,
    }


@pytest.mark.slow
def test_soak_figures(soak):
    """Prints the figures (pytest -rA shows them) and checks the run was a real soak."""
    f = soak["figures"]
    print(f"soak figures ({soak['path']}):\n{json.dumps(f, indent=2)}")
    assert f["duration_s"] >= SOAK_S * 0.9
    assert f["conversations_soak_phase"] >= CONVERSATIONS - 3, f  # (3 chat clients: the last may be cut short)
    assert f["clients_that_left"] > 0 and f["by_kind"].get("garbage", 0) > 20
    assert soak["health"] == 200 and f["server_exit_code"] == 0, soak["log"][-3000:]


@pytest.mark.slow
def test_no_5xx_and_no_client_surprises(soak):
    bad = [(k, s) for k, s in soak["statuses"] if s >= 500 or s < 0]
    assert not bad, (bad[:20], soak["log"][-3000:])
    assert not soak["failures"], soak["failures"][:20]
    assert '"internal_error"' not in soak["log"] and "Traceback" not in soak["log"], soak["log"][-3000:]


@pytest.mark.slow
def test_rss_and_fds_stay_flat(soak):
    f = soak["figures"]
    # flat: the end within the slack of the start or, where the bundle's reloads raised it (a reloaded
    # bundle's new weights and the allocator's arenas are not a leak: a CI run saw start 238 -> end
    # 295 MB across the three reloads), of the lowest it was once the last rewrite was done
    base = max(f["rss_mb_start"], f["rss_mb_after_rewrites"] or 0.0)
    assert f["rss_mb_end"] <= base + RSS_SLACK_MB, f
    assert f["rss_mb_end"] <= f["rss_mb_boot"] + CHAT_CACHE_MB + RSS_SERVING_MB, f
    assert f["fds_end"] <= f["fds_start"] + FD_SLACK, f
    assert f["threads_end"] <= f["threads_start"] + 4, f  # the pools are bounded: no thread per request
    assert f["inflight_end"] == 0 and f["queued_end"] == 0, f  # no request stuck after its client left


@pytest.mark.slow
def test_chat_cache_stays_within_its_limit(soak):
    f = soak["figures"]
    assert 0 < f["chat_cache_mb_max"] <= CHAT_CACHE_MB, f  # used, and bounded by --chat-cache-mb
    assert f["chat_cache_mb_end"] <= CHAT_CACHE_MB


@pytest.mark.slow
def test_every_answer_equals_the_same_request_sent_alone(soak):
    alone, mismatches = soak["alone"], []
    for kind, body, got, _ in soak["answers"]:
        want = alone[json.dumps(body, sort_keys=True)]
        if not same_answer(kind, got, want):
            mismatches.append((kind, body if kind != "emb" else body["input"][:1], got if kind != "emb" else "vectors"))
    assert not mismatches, (len(mismatches), mismatches[:5])


@pytest.mark.slow
def test_a_bundle_rewritten_while_served_keeps_serving_whole_answers(soak):
    """quantize into and export over the served embedding bundle: both exit 0, the rewritten bundle
    verifies, and every embedding answer came wholly from the old bundle or wholly from the new one."""
    from mmdeploy.runtimes.scoring import l2_normalize

    for what, p, _, _ in soak["rewrites"]:
        assert p.returncode == 0, (what, p.stdout[-2000:], p.stderr[-2000:])
    assert [w for w, *_ in soak["rewrites"]] == ["quantize", "quantize", "export"]
    soak["bundle"].verify_all(full=True)
    pipe = soak["new_pipe"]

    def new_answer(inputs: list[str]) -> list[np.ndarray]:
        out = []
        for s in inputs:
            if s.startswith("data:"):
                v = pipe.embed_images([base64.b64decode(s.split(",", 1)[1])])[0]
            else:
                v = pipe.embed_texts([s])[0]
            out.append(l2_normalize(np.asarray(v, np.float32)))
        return out

    old = new = 0
    alone = soak["alone"]
    for kind, body, got, _ in soak["answers"]:
        if kind != "emb":
            continue
        if same_answer("emb", got, alone[json.dumps(body, sort_keys=True)]):
            old += 1
        elif same_answer("emb", got, new_answer(body["input"])):
            new += 1
        else:
            raise AssertionError(f"an answer from neither bundle (or a mix): {body['input']}")
    # the new weights answer differently, so a mix would have been seen
    key, vecs = next((k, v) for k, v in alone.items() if '"input"' in k and '"model": "emb"' in k)
    assert not same_answer("emb", new_answer(json.loads(key)["input"]), vecs), "the re-export changed nothing"
    print(f"embedding answers from the old bundle: {old}, from the new: {new}")


def test_the_chat_cache_counts_the_images_a_conversation_keeps():
    """What the soak found: a kept conversation holds its decoded images, and --chat-cache-mb must count them
    (a 2000 x 2000 photo is 12 MB beside a tiny model's KV of a few KB)."""
    from collections import OrderedDict
    from types import SimpleNamespace

    from mmdeploy.runtimes.pipelines.vlm import Conversation
    from mmdeploy.runtimes.serve.model import ServedModel
    from mmdeploy.runtimes.session import RunDecoder

    def kv_of_256_bytes() -> RunDecoder:  # the generic decoder holding a cache of 256 bytes
        dec = RunDecoder(None, [("past_key", "present_key")])
        dec.start({"past_key": np.zeros((1, 2, 4, 8), np.float32)}, {}, 0)
        return dec

    conv = Conversation(SimpleNamespace(generation={"max_positions": 64}))
    conv.images = [Image.new("RGB", (2000, 2000))]
    conv.decoder = kv_of_256_bytes()
    assert conv.cache_bytes == 2000 * 2000 * 3 + 256
    small = Conversation(SimpleNamespace(generation={"max_positions": 64}))
    small.decoder = kv_of_256_bytes()
    served = SimpleNamespace(cfg=SimpleNamespace(chat_cache_mb=1.0), _chats=OrderedDict(), chat_cache_bytes=0)
    ServedModel._keep_conversation(served, conv)  # over the whole budget: not kept
    ServedModel._keep_conversation(served, small)
    assert list(served._chats.values()) == [small] and served.chat_cache_bytes == 256
