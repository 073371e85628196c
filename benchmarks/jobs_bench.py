"""Batch-job throughput against bench's batch-64 figure, Ray against local, and search latency.

    python -m mmdeploy.benchmarks.jobs_bench out/clip --images 2000 --backend onnxruntime --precision fp32
    python -m mmdeploy.benchmarks.jobs_bench --search-rows 1000000 --dim 512

The corpus is real photos (skimage.data) cut into random crops of 480-800 px and saved as JPEG,
so decoding costs what a photo library's does. Run on a quiet machine: the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def write_photo_corpus(root: Path, n: int, seed: int = 0) -> list[str]:
    from ..common.datasets.photos import photos

    rng = np.random.default_rng(seed)
    base = photos()
    out = []
    for i in range(n):
        im = base[i % len(base)]
        w, h = im.size
        side = int(rng.integers(min(w, h) // 2, min(w, h) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        target = int(rng.integers(480, 801))
        crop = im.crop((x, y, x + side, y + side)).resize((target, int(target * 0.75)))
        p = root / f"d{i % 10}" / f"photo-{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        crop.save(p, quality=90)
        out.append(str(p))
    return out


def bench_batch64(bundle: str, backend: str, precision: str, threads: int | None) -> float:
    """bench's own batch-64 items/s for the image tower of this variant (p50 of its timed runs)."""
    from .bench import BenchConfig, bench

    rep = bench(
        bundle,
        BenchConfig(
            backends=[backend],
            precisions=[precision],
            batches=[64],
            runs=5,
            warmup=1,
            threads=threads,
            pytorch=False,
            record=False,
        ),
        log=lambda m: None,
    )
    rows = [r for r in rep["results"] if r["component"] == "vision" and r["batch"] == 64]
    return rows[0]["items_per_s"]


def jobs(args) -> dict[str, Any]:
    from ..jobs import run_job

    res: dict[str, Any] = {
        "bundle": args.bundle,
        "variant": f"{args.backend}/{args.precision}",
        "images": args.images,
        "corpus": args.corpus,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        if args.corpus == "photos":
            write_photo_corpus(tmp / "photos", args.images)
        else:  # the fixture's own 64 px shapes (PNG and five other formats, 1 in 97 broken)
            from ..common.datasets.corpus import write_corpus

            write_corpus(tmp / "photos", args.images)
        res["corpus_write_s"] = round(time.perf_counter() - t, 1)
        res["bench_batch64_items_per_s"] = round(
            bench_batch64(args.bundle, args.backend, args.precision, args.threads), 1
        )
        kw = dict(
            images=[str(tmp / "photos")],
            backend=args.backend,
            precision=args.precision,
            threads=args.threads,
            batch=64,
            progress=False,
            shard_size=args.shard_size,
        )
        for workers in args.workers:
            s = run_job(args.bundle, tmp / f"local-{workers}", workers=workers, **kw)
            res[f"local_workers{workers}_items_per_s"] = s["this_run"]["items_per_s"]
        if args.ray:
            s = run_job(args.bundle, tmp / "ray", ray="local", workers=args.workers[0], **kw)
            res["ray_items_per_s"] = s["this_run"]["items_per_s"]
            res["ray_steady_items_per_s"] = s["ray"].get("steady_items_per_s")
            res["ray_startup_s"] = s["ray"].get("first_shard_s")
    best = max(v for k, v in res.items() if k.startswith("local_"))
    res["local_vs_bench"] = round(best / res["bench_batch64_items_per_s"], 3)
    if "ray_items_per_s" in res:
        res["ray_vs_local"] = round(res["ray_items_per_s"] / best, 3)
    return res


def search_latency(args) -> dict[str, Any]:
    """A synthetic job folder of clustered unit vectors (real embeddings cluster; uniform random
    vectors are the worst case for an index), then exact and FAISS query latencies and recall@10."""
    from ..jobs.search import build_index, search_vectors
    from ..jobs.store import FORMAT, VERSION, JobStore

    rng = np.random.default_rng(0)
    n, d, per = args.search_rows, args.dim, 65536
    centers = rng.standard_normal((1000, d)).astype(np.float32)
    res: dict[str, Any] = {"rows": n, "dim": d}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "emb"
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "task": "image-embedding",
            "input_column": "path",
            "output_column": "embedding",
            "bundle": "synthetic",
            "model": "synthetic",
            "family": "clip",
            "bundle_sha256": "0" * 64,
            "variant": "none/none",
            "options": {},
            "dim": d,
            "weights": {},
            "inputs": {"sources": [], "count": n, "fingerprint": "", "skipped_not_images": 0},
            "shard_size": per,
            "num_shards": -(-n // per),
        }
        store = JobStore.open(root, meta)
        t = time.perf_counter()
        for i in range(store.num_shards):
            rng_i = store.shard_range(i)
            x = centers[rng.integers(0, len(centers), len(rng_i))] + 0.6 * rng.standard_normal((len(rng_i), d)).astype(
                np.float32
            )
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            store.write_shard(i, [f"v{k}" for k in rng_i], list(x), [None] * len(rng_i))
        res["write_s"] = round(time.perf_counter() - t, 1)
        q = centers[:16] + 0.6 * rng.standard_normal((16, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)

        def timed(fn, reps=5):
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                out = fn()
                ts.append(time.perf_counter() - t0)
            return out, round(1000 * float(np.median(ts)), 1)

        exact, res["exact_1q_ms"] = timed(lambda: search_vectors(root, q[:1], k=10, exact=True))
        exact16, res["exact_16q_ms"] = timed(lambda: search_vectors(root, q, k=10, exact=True), reps=3)
        for kind in args.index_kinds:
            info = build_index(root, kind=kind)
            res[f"{kind}_build_s"] = info["build_seconds"]
            _, res[f"{kind}_first_query_ms"] = timed(
                lambda: search_vectors(root, q[:1], k=10), reps=1
            )  # reads the index
            got, res[f"{kind}_1q_ms"] = timed(lambda: search_vectors(root, q[:1], k=10))  # index held in memory
            got16 = search_vectors(root, q, k=10)
            res[f"{kind}_recall@10"] = round(
                float(
                    np.mean([len({h["item"] for h in a} & {h["item"] for h in b}) / 10 for a, b in zip(exact16, got16)])
                ),
                3,
            )
            (root / "_index" / "index.json").unlink()
    return res


def main(argv: list[str] | None = None) -> None:
    from ..common.env import cpu_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", help="an image-embedding bundle (skip for --search-rows only)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument(
        "--corpus",
        choices=["photos", "shapes"],
        default="photos",
        help="photos: JPEG crops of real photos, 480-800 px; shapes: 64 px images in six formats",
    )
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--search-rows", type=int, default=0)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--index-kinds", type=lambda s: s.split(","), default=["flat", "ivf", "hnsw"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"cpu": cpu_info()}
    if args.bundle:
        report["jobs"] = jobs(args)
    if args.search_rows:
        report["search"] = search_latency(args)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
