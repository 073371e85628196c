"""Search a job folder's embeddings: exact cosine top-k in numpy, or a FAISS index when built.

Exact search reads the shards memory-mapped, ``chunk_rows`` rows at a time (embeddings are
stored uncompressed), so a 10M x 512 corpus needs ``chunk_rows x 512`` floats of scratch, not
20 GB. Embeddings are L2-normalised, so the inner product is the cosine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..common.capabilities import Capability
from ..errors import InputError, require
from .store import INDEX_DIR, finished_shards, write_json_atomic

INDEX_KINDS = ("flat", "ivf", "hnsw")
MAX_K = 10_000


def _embedding_files(root: Path) -> tuple[dict[str, Any], list[Path]]:
    meta, files = finished_shards(root)
    if meta.get("output_column") != "embedding":
        raise InputError(
            f"{root} holds a {meta.get('task')} job: search needs an embedding job (`mmdeploy embed --out`)"
        )
    if not files or not meta.get("dim"):
        raise InputError(f"{root}: no finished shards with embeddings yet")
    return meta, files


def iter_embeddings(files: Sequence[Path], chunk_rows: int = 65536):
    """(file index, first row, (n, dim) float32 view) chunks, memory-mapped where possible."""
    pq = require("pyarrow.parquet", "corpus")
    for fi, f in enumerate(files):
        pf = pq.ParquetFile(f, memory_map=True)
        row = 0
        for rb in pf.iter_batches(batch_size=chunk_rows, columns=["embedding"]):
            col = rb.column(0)
            x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
            yield fi, row, x
            row += len(col)


def exact_topk(
    files: Sequence[Path], queries: np.ndarray, k: int, chunk_rows: int = 65536
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k by inner product for each query row -> (scores, file index, row), each (q, k)."""
    nq = len(queries)
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_f = np.zeros((nq, 0), np.int64)
    best_r = np.zeros((nq, 0), np.int64)
    for fi, r0, x in iter_embeddings(files, chunk_rows):
        s = queries @ x.T  # (q, n)
        kk = min(k, s.shape[1])
        top = (
            np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else np.tile(np.arange(s.shape[1]), (nq, 1))
        )
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_f = np.concatenate([best_f, np.full_like(top, fi)], 1)
        cand_r = np.concatenate([best_r, top + r0], 1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_f, best_r = (np.take_along_axis(a, keep, 1) for a in (cand_s, cand_f, cand_r))
    return best_s, best_f, best_r


# -- FAISS index ------------------------------------------------------------------------------------


def _shard_list(meta: dict[str, Any]) -> list[list]:
    """[[shard name, rows], ...] in shard order, as _job.json records them (what an index covers;
    read from the job file, not from every shard's footer on each query)."""
    return [[name, int(meta["shards"][name]["rows"])] for name in sorted(meta["shards"])]


def build_index(
    folder: str | os.PathLike,
    kind: str = "ivf",
    nlist: int | None = None,
    hnsw_m: int = 32,
    chunk_rows: int = 65536,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """_build_index under the job folder's writer lock: a job resuming into the folder finishes
    first, so the index covers a settled set of shards."""
    from ..common.locks import writer_lock

    with writer_lock(folder, "job folder"):
        return _build_index(folder, kind, nlist, hnsw_m, chunk_rows, log)


def _build_index(
    folder: str | os.PathLike,
    kind: str = "ivf",
    nlist: int | None = None,
    hnsw_m: int = 32,
    chunk_rows: int = 65536,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build a FAISS index over a job folder's finished shards into ``folder/index/``.
    kind: flat (exact, FAISS's BLAS), ivf (inverted lists over k-means cells: fast, approximate),
    hnsw (graph: fastest queries, slowest build)."""
    faiss = require("faiss", "search")
    root = Path(folder)
    if kind not in INDEX_KINDS:
        raise InputError(f"--kind {kind!r}: choose one of {', '.join(INDEX_KINDS)}")
    meta, files = _embedding_files(root)
    dim = int(meta["dim"])
    shards = _shard_list(meta)
    n = sum(r for _, r in shards)
    t0 = time.perf_counter()
    params: dict[str, Any] = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        params = {"M": hnsw_m, "efConstruction": 80, "efSearch": 64}
    else:
        # 4 sqrt(n) cells, each with >= 39 training points (FAISS warns, and recall drops, below that)
        nlist = nlist or max(1, min(65536, int(4 * np.sqrt(n)), n // 39))
        if nlist > n:
            raise InputError(f"--nlist {nlist}: more cells than the {n} vectors")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on an evenly spaced sample (FAISS wants ~40 points per cell; more adds time, not recall)
        want = min(n, 64 * nlist)
        stride = max(1, n // want)
        sample = np.concatenate([x[::stride] for _, _, x in iter_embeddings(files, chunk_rows)])[:want]
        index.train(np.ascontiguousarray(sample, np.float32))
        params = {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 64)), "trained_on": len(sample)}
    for _, _, x in iter_embeddings(files, chunk_rows):
        index.add(np.ascontiguousarray(x, np.float32))
    out = root / INDEX_DIR
    out.mkdir(exist_ok=True)
    tmp = out / ".faiss.index.tmp"
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, out / "faiss.index")
    except Exception as exc:
        from ..common.diskspace import disk_problem

        problem = disk_problem(exc, out, f"writing {out / 'faiss.index'} (the previous index is kept)")
        tmp.unlink(missing_ok=True)
        if problem is not None:
            raise problem from None
        raise
    info = {
        "kind": kind,
        "dim": dim,
        "rows": n,
        "shards": shards,
        "params": params,
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out / "index.json", info)
    if log:
        log(f"{kind} index over {n:,} vectors in {info['build_seconds']:.1f} s -> {out}")
    return info


_INDEX_CACHE: dict[tuple[str, int, int], Any] = {}  # (path, mtime, size) -> index: read once per process


def _load_index(root: Path, meta: dict[str, Any], log):
    p = root / INDEX_DIR / "index.json"
    if not p.is_file():
        return None, None
    info = json.loads(p.read_text())
    if info.get("shards") != _shard_list(meta):
        if log:
            log(f"{root / INDEX_DIR} is older than the shards (rebuild it with `mmdeploy index`): searching exactly")
        return None, None
    faiss = require("faiss", "search")
    f = root / INDEX_DIR / "faiss.index"
    st = f.stat()
    key = (str(f.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()  # one index held at a time: a 1M x 512 flat index is 2 GB
        _INDEX_CACHE[key] = faiss.read_index(str(f))
    index = _INDEX_CACHE[key]
    if info["kind"] == "hnsw":
        index.hnsw.efSearch = int(info["params"]["efSearch"])
    elif info["kind"] == "ivf":
        index.nprobe = int(info["params"]["nprobe"])
    return index, info


_LOOKUP: dict[tuple[str, int, int, str], Any] = {}  # a shard's (item, path) columns, for the hits of later queries
MAX_LOOKUP = 256  # shards held (a 4096-row shard's paths are ~0.5 MB)


def _lookup_table(f: Path, col: str):
    pq = require("pyarrow.parquet", "corpus")
    st = f.stat()
    key = (str(f.resolve()), st.st_mtime_ns, st.st_size, col)
    if key not in _LOOKUP:
        if len(_LOOKUP) >= MAX_LOOKUP:
            _LOOKUP.pop(next(iter(_LOOKUP)))
        _LOOKUP[key] = pq.read_table(f, columns=["item", col], memory_map=True)
    return _LOOKUP[key]


def search_vectors(
    folder: str | os.PathLike,
    queries: np.ndarray,
    k: int = 10,
    exact: bool = False,
    chunk_rows: int = 65536,
    log: Callable[[str], None] | None = None,
) -> list[list[dict[str, Any]]]:
    """Top-k rows of a job folder for each query vector: [{score, item, <input column>, shard}]."""
    require("pyarrow.parquet", "corpus")
    root = Path(folder)
    if not 1 <= k <= MAX_K:
        raise InputError(f"-k {k}: must be between 1 and {MAX_K}")
    meta, files = _embedding_files(root)
    q = np.atleast_2d(np.asarray(queries, np.float32))
    if q.shape[1] != int(meta["dim"]):
        raise InputError(f"query vectors have dimension {q.shape[1]}; {root} holds {meta['dim']}-d embeddings")
    index, info = (None, None) if exact else _load_index(root, meta, log)
    if index is not None:
        scores, ids = index.search(np.ascontiguousarray(q), k)
        starts = np.cumsum([0] + [r for _, r in info["shards"]])
        valid = ids >= 0
        f_idx = np.where(valid, np.searchsorted(starts, ids, side="right") - 1, 0)
        rows = np.where(valid, ids - starts[f_idx], -1)
    else:
        scores, f_idx, rows = exact_topk(files, q, k, chunk_rows)
    col = meta["input_column"]
    results = []
    for qi in range(len(q)):
        hits = []
        for s, fi, r in zip(scores[qi], f_idx[qi], rows[qi]):
            if r < 0 or not np.isfinite(s):
                continue
            fi = int(fi)
            t = _lookup_table(files[fi], col)
            hits.append(
                {
                    "score": float(s),
                    "item": int(t["item"][int(r)].as_py()),
                    col: t[col][int(r)].as_py(),
                    "shard": files[fi].name,
                }
            )
        results.append(hits)
    return results


def query_pipeline(meta: dict[str, Any], bundle: str | os.PathLike | None = None, threads: int | None = None):
    """The job's own variant of its bundle (or ``bundle``, if it holds the same weights)."""
    from ..runtimes import load
    from ..runtimes.bundle import Bundle
    from .runner import variant_weights

    path = bundle or meta["bundle"]
    b = Bundle.open(path)
    backend, precision = meta["variant"].split("/", 1)
    if not b.find(None, backend, precision):
        raise InputError(f"{b.root} has no {meta['variant']} variant, which this job was embedded with")
    if variant_weights(b, backend, precision) != meta.get("weights"):
        raise InputError(
            f"{b.root}: its {meta['variant']} weights differ from those the job was embedded with "
            f"({meta['bundle']}): the scores would mean nothing"
        )
    return load(b, backend, precision, threads=threads)


def search(
    folder: str | os.PathLike,
    *,
    text: str | None = None,
    image: str | None = None,
    vector: np.ndarray | None = None,
    k: int = 10,
    bundle: str | os.PathLike | None = None,
    exact: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Top-k of a job folder for one query: a text or an image (embedded by the job's bundle and
    variant), or a vector."""
    from .store import read_job

    if sum(x is not None for x in (text, image, vector)) != 1:
        raise InputError("give one query: --text STR or --image PATH")
    root = Path(folder)
    meta = read_job(root)
    if vector is None:
        pipe = query_pipeline(meta, bundle, threads)
        if text is not None:
            if not text.strip():
                raise InputError("--text: empty query")
            if not pipe.can(Capability.EMBED_TEXTS):
                raise InputError(f"{pipe.bundle.root} has no text encoder: query with --image")
            vector = pipe.embed_texts([text])[0]
        else:
            if not pipe.can(Capability.EMBED_IMAGES):
                raise InputError(f"{pipe.bundle.root} has no image encoder: query with --text")
            vector = pipe.embed_images([image])[0]
    return search_vectors(root, vector, k=k, exact=exact, log=log)[0]
