"""Load generator for `mmdeploy serve`: throughput and latency per concurrency level.

    python -m mmdeploy.benchmarks.loadgen out/clip --concurrency 1,16 --requests 2000
    python -m mmdeploy.benchmarks.loadgen --url http://127.0.0.1:8000 --model clip
    mmdeploy bench-serve out/clip --concurrency 1,16

Given a bundle it starts its own server (``mmdeploy serve`` in a subprocess on a free
127.0.0.1 port) and stops it afterwards; given ``--url`` it talks to a running one. Only
loopback addresses are accepted: this is a benchmark, not a load-testing tool for other
people's machines. Every level is bounded by a request count *and* a time limit.

Each client is a keep-alive HTTP/1.1 connection sending one request at a time (a closed
loop, like ``wrk``): an httpx AsyncClient holding one connection (httpx does the framing,
chunked bodies included). Payloads are distinct procedurally generated images (the shapes
data set) as PNG data URLs, or sentences, one per request, OpenAI embeddings format.

Per level: requests, errors, wall time, throughput, p50/p90/p99/max latency, the mean
batch size the server ran (from its /metrics) and its resident memory before and after.
numpy + pillow + httpx (the serve extra; imported only when a level runs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..common.timing import significant
from ..errors import InputError, MMDeployError, require

__all__ = ["LevelResult", "LoadReport", "run_loadgen", "main"]

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    items_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_batch: float | None
    server_cpu_ms_per_req: float | None
    client_cpu_ms_per_req: float
    rss_before_mb: float | None
    rss_after_mb: float | None
    error_samples: list[str] = field(default_factory=list)
    # the model alone, measured in this process right after the level (server idle), same variant,
    # same inputs, at the server's mean batch size: the ceiling the server is compared against
    model_batch: int | None = None
    model_items_per_s: float | None = None
    fraction_of_model: float | None = None
    model_cpu_ms_per_item: float | None = None
    server_overhead_cpu_ms_per_req: float | None = None  # server CPU beyond the model's own


@dataclass
class LoadReport:
    url: str
    model: str
    kind: str
    items_per_request: int
    levels: list[LevelResult]

    @property
    def speedup(self) -> float | None:
        """Throughput at the highest concurrency over that at the lowest."""
        if len(self.levels) < 2 or self.levels[0].throughput_rps <= 0:
            return None
        lo = min(self.levels, key=lambda l: l.concurrency)
        hi = max(self.levels, key=lambda l: l.concurrency)
        return hi.throughput_rps / lo.throughput_rps if lo.throughput_rps else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["speedup"] = self.speedup
        return d


# -- payloads -----------------------------------------------------------------------------------


def image_payloads(n: int, image_size: int = 64) -> list[str]:
    from ..common.datasets import shapes

    out = []
    for s in shapes.generate("test", n, image_size=image_size):
        buf = io.BytesIO()
        s.image.save(buf, "PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def text_payloads(n: int) -> list[str]:
    from ..common.datasets import sentences

    return sentences.sentence_batch(n)


class ModelCeiling:
    """The served variant run in this process on the load's own inputs: items/s and CPU per item
    at a given batch size. Loaded once, on first use; only when the bundle is on this machine."""

    def __init__(self, bundle: str, variant: str | None, kind: str, payloads: list[str], min_seconds: float = 3.0):
        self.bundle, self.variant, self.kind, self.payloads = bundle, variant, kind, payloads
        self.min_seconds = min_seconds
        self._pipe = None
        self._inputs: list | None = None

    def _ready(self):
        if self._pipe is None:
            from ..runtimes import load

            backend, _, precision = (self.variant or "").partition("/")
            self._pipe = load(self.bundle, backend=backend or None, precision=precision or None)
            if self.kind == "image":
                from ..runtimes.images import load_image

                self._inputs = [load_image(p) for p in self.payloads]  # decoding is the server's cost
            else:
                self._inputs = list(self.payloads)
        return self._pipe

    def measure(self, batch: int) -> tuple[float, float]:
        """(items/s, CPU ms per item) at ``batch``: 2 untimed calls, then >= 3 calls and min_seconds."""
        pipe = self._ready()
        run = pipe.embed_images if self.kind == "image" else pipe.embed_texts
        inputs = [self._inputs[i % len(self._inputs)] for i in range(batch)]
        for _ in range(2):
            run(inputs, batch_size=batch)
        calls, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while calls < 3 or time.perf_counter() - t0 < self.min_seconds:
            run(inputs, batch_size=batch)
            calls += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return calls * batch / wall, cpu * 1000 / (calls * batch)


# -- the HTTP client: one keep-alive connection per simulated client ------------------------------


def _httpx():
    return require("httpx", "serve")  # MissingExtraError: install it with  pip install 'mmdeploy[serve]'


class _Conn:
    """One keep-alive HTTP/1.1 connection (an httpx AsyncClient limited to one), one request at a time."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 120.0):
        httpx = _httpx()
        self.client = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=timeout,
            trust_env=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def request(self, path: str, body: bytes) -> tuple[int, bytes]:
        r = await self.client.post(path, content=body)
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.client.aclose()


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"Content-Type": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def _get(url: str, api_key: str | None, timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only, checked
        return r.read()


def _metric(text: str, name: str, labels: str = "") -> float | None:
    """Sum of a metric's samples whose label set contains ``labels`` (e.g. 'component="vision"')."""
    total, found = 0.0, False
    pat = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+([0-9.eE+\-]+|NaN)$", re.M)
    for m in pat.finditer(text):
        if labels and labels not in (m.group(1) or ""):
            continue
        total += float(m.group(2))
        found = True
    return total if found else None


def _check_loopback(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or u.hostname is None:
        raise InputError(f"--url {url!r}: give http://127.0.0.1:PORT")
    if u.hostname not in LOOPBACK:
        raise InputError(f"--url {url!r}: the load generator only talks to 127.0.0.1 / localhost / ::1")
    return u.hostname, u.port or 80


# -- the measurement ----------------------------------------------------------------------------


async def _level(
    url: str,
    headers: dict[str, str],
    bodies: list[bytes],
    concurrency: int,
    total: int,
    duration_s: float,
    check: Callable[[int, bytes], str | None],
    path: str = "/v1/embeddings",
) -> tuple[list[float], int, list[str], float]:
    httpx = _httpx()
    lat: list[float] = []
    errors = 0
    samples: list[str] = []
    sent = 0
    deadline = time.perf_counter() + duration_s

    async def client(k: int) -> None:
        nonlocal sent, errors
        conn = _Conn(url, headers, timeout=max(60.0, duration_s))
        try:
            while sent < total and time.perf_counter() < deadline:
                i = sent
                sent += 1
                raw = bodies[(i * 7919 + k) % len(bodies)]
                t = time.perf_counter()
                try:
                    status, body = await conn.request(path, raw)
                    why = check(status, body)
                except (
                    httpx.HTTPError,
                    OSError,
                    ValueError,
                    IndexError,
                ) as exc:  # httpx reconnects on the next request
                    why = f"{type(exc).__name__}: {exc}"
                lat.append(time.perf_counter() - t)
                if why is not None:
                    errors += 1
                    if len(samples) < 5:
                        samples.append(why)
        finally:
            await conn.aclose()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return lat, errors, samples, time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen | None, api_key: str | None, timeout: float = 180.0) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if proc is not None and proc.poll() is not None:
            raise MMDeployError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            _get(url + "/health", api_key, timeout=2.0)
            return
        except OSError:
            time.sleep(0.2)
    raise MMDeployError(f"the server at {url} was not ready after {timeout:.0f} s")


def run_loadgen(
    bundle: str | None = None,
    *,
    url: str | None = None,
    model: str | None = None,
    kind: str = "image",
    concurrency: list[int] | tuple[int, ...] = (1, 16),
    requests: int = 2000,
    duration_s: float = 60.0,
    warmup: int = 50,
    items: int = 1,
    distinct: int = 256,
    api_key: str | None = None,
    server_args: list[str] | tuple[str, ...] = (),
    model_ceiling: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> LoadReport:
    """Measure one server (or one started for ``bundle``) at each concurrency level.

    With ``bundle`` and ``model_ceiling``, each level is followed by the model alone in this
    process (same variant and inputs, at the level's mean batch size), so the report gives the
    server's throughput as a fraction of the model's and its CPU per request beyond the model's."""
    if (bundle is None) == (url is None):
        raise InputError("give a bundle to serve or --url of a running server (one of them)")
    if kind not in ("image", "text"):
        raise InputError(f"--kind {kind!r}: choose image or text")
    if requests < 1 or duration_s <= 0 or items < 1 or not concurrency or min(concurrency) < 1:
        raise InputError("requests, duration, items and every concurrency level must be positive")
    _httpx()  # a missing serve extra is one line before any server starts
    api_key = api_key or os.environ.get("MMDEPLOY_API_KEY") or None
    proc = None
    logf = None
    if bundle is not None:
        from pathlib import Path

        if not Path(bundle).is_dir():
            raise InputError(f"bundle not found: {bundle}")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "mmdeploy.cli",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *server_args,
        ]
        log(f"starting: {' '.join(cmd)}")
        env = dict(os.environ)
        if api_key:
            env["MMDEPLOY_API_KEY"] = api_key
        import tempfile

        logf = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env)
    url = url.rstrip("/")
    _check_loopback(url)
    try:
        _wait_ready(url, proc, api_key)
        models = json.loads(_get(url + "/v1/models", api_key))["data"]
        if model is None:
            model = models[0]["id"]
        elif model not in [m["id"] for m in models]:
            raise InputError(f"model {model!r} is not served at {url} (served: {', '.join(m['id'] for m in models)})")
        payloads = image_payloads(distinct) if kind == "image" else text_payloads(distinct)
        reqs = []
        for i in range(len(payloads)):
            inp = [payloads[(i + j) % len(payloads)] for j in range(items)]
            body = json.dumps(
                {"model": model, "input": inp[0] if items == 1 else inp, "encoding_format": "float"}
            ).encode()
            reqs.append(body)
        headers = _headers(api_key)
        comp = "vision" if kind == "image" else "text"
        ceiling = None
        if bundle is not None and model_ceiling:
            health = json.loads(_get(url + "/health", api_key))
            variant = health.get("models", {}).get(model, {}).get("variant")
            ceiling = ModelCeiling(str(bundle), variant, kind, payloads)

        def check(status: int, body: bytes) -> str | None:
            if status != 200:
                return f"HTTP {status}: {body[:200].decode(errors='replace')}"
            data = json.loads(body).get("data")
            if not isinstance(data, list) or len(data) != items:
                return f"bad response: {body[:200].decode(errors='replace')}"
            return None

        levels = []
        for c in concurrency:
            if warmup:
                asyncio.run(_level(url, headers, reqs, c, warmup, duration_s, check))
            before = _get(url + "/metrics", api_key).decode()
            cpu0 = time.process_time()
            lat, errors, samples, secs = asyncio.run(_level(url, headers, reqs, c, requests, duration_s, check))
            client_cpu = time.process_time() - cpu0
            after = _get(url + "/metrics", api_key).decode()
            sel = f'component="{comp}"'
            bs = [
                (_metric(t, "mmdeploy_batch_size_sum", sel), _metric(t, "mmdeploy_batch_size_count", sel))
                for t in (before, after)
            ]
            mean_batch = None
            if None not in (*bs[0], *bs[1]) and bs[1][1] > bs[0][1]:
                mean_batch = (bs[1][0] - bs[0][0]) / (bs[1][1] - bs[0][1])
            rss = [_metric(t, "process_resident_memory_bytes") for t in (before, after)]
            cpu = [_metric(t, "process_cpu_seconds_total") for t in (before, after)]
            ms = np.array(lat) * 1000 if lat else np.zeros(1)
            n = len(lat)
            r = LevelResult(
                concurrency=c,
                requests=n,
                errors=errors,
                seconds=round(secs, 3),
                throughput_rps=round(n / secs, 1) if secs else 0.0,
                items_per_s=significant(n * items / secs) if secs else 0.0,
                p50_ms=round(float(np.percentile(ms, 50)), 2),
                p90_ms=round(float(np.percentile(ms, 90)), 2),
                p99_ms=round(float(np.percentile(ms, 99)), 2),
                max_ms=round(float(ms.max()), 2),
                mean_batch=round(mean_batch, 2) if mean_batch is not None else None,
                server_cpu_ms_per_req=round((cpu[1] - cpu[0]) * 1000 / max(n, 1), 3) if None not in cpu else None,
                client_cpu_ms_per_req=round(client_cpu * 1000 / max(n, 1), 3),
                rss_before_mb=round(rss[0] / 2**20, 1) if rss[0] else None,
                rss_after_mb=round(rss[1] / 2**20, 1) if rss[1] else None,
                error_samples=samples,
            )
            if ceiling is not None and mean_batch is not None and n:
                r.model_batch = max(1, round(mean_batch))
                ips, cpu_item = ceiling.measure(r.model_batch)
                r.model_items_per_s, r.model_cpu_ms_per_item = significant(ips), round(cpu_item, 3)
                # from the reported (rounded) figures: the relation holds on a slow machine too
                r.fraction_of_model = significant(r.items_per_s / r.model_items_per_s)
                if r.server_cpu_ms_per_req is not None:
                    r.server_overhead_cpu_ms_per_req = round(r.server_cpu_ms_per_req - cpu_item * items, 3)
            log(
                f"concurrency {c}: {r.throughput_rps} req/s, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, "
                f"{r.errors} errors / {r.requests}, mean batch {r.mean_batch}, server CPU {r.server_cpu_ms_per_req} ms/req, RSS {r.rss_before_mb} -> {r.rss_after_mb} MB"
                + (
                    ""
                    if r.model_items_per_s is None
                    else f"; the model alone at batch {r.model_batch}: {r.model_items_per_s} items/s "
                    f"({r.fraction_of_model:.0%} reached), {r.model_cpu_ms_per_item} ms CPU/item"
                )
            )
            levels.append(r)
        return LoadReport(url=url, model=model, kind=kind, items_per_request=items, levels=levels)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM) and logf is not None:
                logf.seek(0)
                tail = logf.read()[-2000:].decode(errors="replace")
                log(f"server exited with code {proc.returncode}:\n{tail}")
        if logf is not None:
            logf.close()


def format_report(rep: LoadReport) -> str:
    cols = [
        "conc",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "mean batch",
        "srv CPU ms/req",
        "model items/s",
        "reached",
        "overhead CPU ms/req",
        "RSS MB before→after",
    ]
    dash = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    rows = [
        [
            str(l.concurrency),
            str(l.requests),
            str(l.errors),
            f"{l.throughput_rps:.1f}",
            f"{l.p50_ms:.2f}",
            f"{l.p90_ms:.2f}",
            f"{l.p99_ms:.2f}",
            f"{l.max_ms:.2f}",
            dash(l.mean_batch, "{:.2f}"),
            dash(l.server_cpu_ms_per_req, "{:.2f}"),
            "-" if l.model_items_per_s is None else f"{l.model_items_per_s:.1f} @{l.model_batch}",
            dash(l.fraction_of_model, "{:.0%}"),
            dash(l.server_overhead_cpu_ms_per_req, "{:.2f}"),
            f"{l.rss_before_mb}→{l.rss_after_mb}",
        ]
        for l in rep.levels
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [
        f"{rep.url}  model {rep.model}  {rep.kind} embeddings, {rep.items_per_request} per request",
        line(cols),
        *map(line, rows),
    ]
    if rep.speedup is not None:
        out.append(f"throughput, highest vs lowest concurrency: {rep.speedup:.2f}x")
    if any(l.model_items_per_s is not None for l in rep.levels):
        out.append(
            "model items/s: the served variant alone in the load generator right after the level, same inputs, "
            "at the server's mean batch; overhead CPU: the server's CPU per request beyond the model's"
        )
    for l in rep.levels:
        for s in l.error_samples:
            out.append(f"error at concurrency {l.concurrency}: {s}")
    return "\n".join(out)


def parse_levels(s: str) -> list[int]:
    if not all(x.strip() for x in s.split(",")):
        raise InputError(f"--concurrency {s!r}: empty item; give comma-separated integers, e.g. 1,16")
    try:
        levels = [int(x) for x in s.split(",")]
    except ValueError:
        raise InputError(f"--concurrency {s!r}: give comma-separated integers, e.g. 1,16") from None
    if not levels or min(levels) < 1:
        raise InputError(f"--concurrency {s!r}: levels must be >= 1")
    return levels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmdeploy.benchmarks.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", help="bundle to serve (a server is started on a free 127.0.0.1 port)")
    p.add_argument("--url", help="a running server instead, e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--model", help="model name (default: the first served)")
    p.add_argument("--kind", default="image", choices=["image", "text"])
    p.add_argument("--concurrency", default="1,16", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=2000, help="requests per level (bounded)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per level at most")
    p.add_argument("--warmup", type=int, default=50, help="untimed requests before each level")
    p.add_argument("--items", type=int, default=1, help="inputs per request")
    p.add_argument("--api-key", default=None, help="or env MMDEPLOY_API_KEY")
    p.add_argument("--json", dest="json_path", help="write the report as JSON")
    p.add_argument("--server-arg", action="append", default=[], help="extra `mmdeploy serve` argument (repeatable)")
    p.add_argument("--no-model-ceiling", action="store_true", help="skip running the model alone after each level")
    a = p.parse_args(argv)
    try:
        rep = run_loadgen(
            a.bundle,
            url=a.url,
            model=a.model,
            kind=a.kind,
            concurrency=parse_levels(a.concurrency),
            requests=a.requests,
            duration_s=a.duration,
            warmup=a.warmup,
            items=a.items,
            api_key=a.api_key,
            server_args=a.server_arg,
            model_ceiling=not a.no_model_ceiling,
        )
    except MMDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(rep))
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(rep.to_dict(), f, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
