"""The job runner: inputs -> pending shards -> prepare (worker threads) + infer (this thread) ->
Parquet shards, on this machine or, with ``ray=``, on a Ray cluster (jobs/cluster.py)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import InputError, Interrupted
from .inputs import find_images, fingerprint, read_texts
from .store import FORMAT, VERSION, JobStore, shard_name
from .tasks import TASKS, Inferer, Preparer, TaskSpec, reason

# task -> (default batch, default shard size): a shard is a few minutes of work at most, so a
# killed job loses little, and few enough files that a 10M-item corpus is ~2,500 shards
DEFAULTS = {"image-embedding": (64, 4096), "text-embedding": (256, 16384), "caption": (8, 512)}
MAX_BATCH, MAX_SHARD, MAX_WORKERS = 4096, 1_000_000, 64

OnBatch = Callable[[int, int], None]  # (items done, of which broken)


def default_workers() -> int:
    """Decode threads: half the cores (inference takes the rest), at least one, at most eight."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _prepare_all(preparer: Preparer, items: Sequence[str]) -> list[tuple[Any, str | None]]:
    out = []
    for it in items:
        try:
            out.append((preparer(it), None))
        except Exception as exc:  # noqa: BLE001 - a broken file is counted and reported, never fatal
            out.append((None, reason(exc)))
    return out


def process_items(
    preparer: Preparer,
    inferer: Inferer,
    items: Sequence[str],
    batch: int,
    pool: ThreadPoolExecutor,
    on_batch: OnBatch | None = None,
) -> tuple[list[Any], list[str | None]]:
    """Outputs and errors for ``items``, in order. Batches are prepared on ``pool`` up to
    (workers + 1) ahead while this thread runs inference, so decoding overlaps the model."""
    chunks = iter([items[j : j + batch] for j in range(0, len(items), batch)])
    futures: deque = deque()

    def submit() -> None:
        c = next(chunks, None)
        if c is not None:
            futures.append(pool.submit(_prepare_all, preparer, c))

    for _ in range(pool._max_workers + 1):
        submit()
    outputs: list[Any] = []
    errors: list[str | None] = []
    while futures:
        prepared = futures.popleft().result()
        submit()
        ok = [j for j, (_, e) in enumerate(prepared) if e is None]
        res = inferer([prepared[j][0] for j in ok]) if ok else []
        got: list[tuple[Any, str | None]] = [(None, e) for _, e in prepared]
        for j, r in zip(ok, res):
            got[j] = r
        outputs += [o for o, _ in got]
        errors += [e for _, e in got]
        if on_batch:
            on_batch(len(got), sum(e is not None for _, e in got))
    return outputs, errors


def variant_weights(bundle, backend: str, precision: str) -> dict[str, str]:
    """component -> sha256 of the variant's model file: what a query must be embedded with to be
    comparable (a manifest that gained a variant since still matches; a re-export does not)."""
    files = bundle.manifest.get("files", {})
    return {a.component: files.get(a.path, {}).get("sha256", "") for a in bundle.find(None, backend, precision)}


def _check_range(value: int | None, flag: str, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise InputError(f"{flag} {value}: must be between {lo} and {hi}")


def plan_job(
    bundle: str | os.PathLike,
    *,
    images: Sequence[str] = (),
    texts: Sequence[str] = (),
    caption: bool = False,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    shard_size: int | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[TaskSpec, dict[str, Any], list[str], Any]:
    """Check everything that can be checked before any work: the bundle can do the task, the
    variant exists, the inputs exist. -> (task spec, job metadata, ordered inputs, the opened bundle)."""
    from ..runtimes.bundle import MANIFEST, Bundle, sha256_file
    from ..runtimes.pipelines import pipeline_class
    from ..runtimes.select import select_variant

    if bool(images) == bool(texts):
        raise InputError("give --images PATTERN or --texts FILE (one of them)")
    if caption and texts:
        raise InputError("caption jobs take --images, not --texts")
    task = "caption" if caption else ("image-embedding" if images else "text-embedding")
    _check_range(shard_size, "--shard-size", 1, MAX_SHARD)
    b = Bundle.open(bundle)
    cap = TASKS[task][2]
    if not (pipe_cls := pipeline_class(b.family, str(b.root))).can(cap):
        flag = "--images" if images else "--texts"
        raise pipe_cls.cannot(cap, f"{'caption' if caption else 'embed'} {flag}", b.root)
    backend, precision = select_variant(b, backend, precision)
    spec = TaskSpec(task, str(b.root.resolve()), backend, precision, threads, dict(options or {}))
    if images:
        inputs, skipped = find_images(images)
    else:
        inputs, skipped = read_texts(texts), 0
    size = shard_size or DEFAULTS[task][1]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "task": task,
        "input_column": spec.input_column,
        "output_column": spec.output_column,
        "bundle": spec.bundle,
        "model": b.name,
        "family": b.family,
        "bundle_sha256": sha256_file(b.root / MANIFEST),
        "variant": f"{backend}/{precision}",
        "options": spec.options,
        "dim": None,
        "weights": variant_weights(b, backend, precision),
        "inputs": {
            "sources": list(images or texts),
            "count": len(inputs),
            "fingerprint": fingerprint(inputs),
            "skipped_not_images": skipped,
        },
        "shard_size": size,
        "num_shards": -(-len(inputs) // size),
    }
    return spec, meta, inputs, b


def run_job(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    *,
    images: Sequence[str] = (),
    texts: Sequence[str] = (),
    caption: bool = False,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    batch: int | None = None,
    shard_size: int | None = None,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ray: str | None = None,
    ray_actors: int | None = None,
    ray_cpus: float | None = None,
    options: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Embed (or caption) every input into Parquet shards under ``out``; returns the summary.

    images: globs (``**`` recurses) or folders; texts: text files, one item per line. Broken
    inputs are recorded with their reason in _job.json and counted, never fatal. ``resume``
    continues a job from its finished shards; ``ray``: "local" or a cluster address."""
    _check_range(batch, "--batch", 1, MAX_BATCH)
    _check_range(workers, "--workers", 1, MAX_WORKERS)
    _check_range(ray_actors, "--ray-actors", 1, 10_000)
    spec, meta, inputs, opened = plan_job(
        bundle,
        images=images,
        texts=texts,
        caption=caption,
        backend=backend,
        precision=precision,
        threads=threads,
        shard_size=shard_size,
        options=options,
    )
    batch = batch or DEFAULTS[spec.task][0]
    workers = workers or default_workers()
    # opened before the job folder is: a variant that does not load or a bad generation option
    # fails here with nothing written (Ray runs check it on the driver the same way)
    preparer, inferer = Preparer(spec, opened), Inferer(spec, opened)
    with JobStore.open(out, meta, resume=resume, overwrite=overwrite) as store:  # the folder's writer lock
        return _run_store(
            store, spec, inputs, preparer, inferer, batch, workers, resume, ray, ray_actors, ray_cpus, progress, log
        )


def _run_store(
    store, spec, inputs, preparer, inferer, batch, workers, resume, ray, ray_actors, ray_cpus, progress, log
):
    """run_job's work on its opened job folder (whose writer lock run_job holds)."""
    pending = store.pending()
    say = log or (lambda m: None)
    done_before = sum(sh["rows"] + len(sh["broken"]) for sh in store.meta["shards"].values())
    if resume:
        say(f"resuming {store.root}: {store.num_shards - len(pending)} of {store.num_shards} shards done")
    bar = _Progress(len(inputs), done_before, spec.task, enabled=progress)
    t0 = time.perf_counter()
    this_run = {"shards": 0, "items": 0, "broken": 0}

    def finished(i: int, outputs, errors) -> None:
        rng = store.shard_range(i)
        entry = store.write_shard(i, [inputs[k] for k in rng], outputs, errors)
        this_run["shards"] += 1
        this_run["items"] += len(rng)
        this_run["broken"] += len(entry["broken"])
        if not bar.live:
            say(
                f"{shard_name(i)}: {entry['rows']} rows, {len(entry['broken'])} broken "
                f"({len(store.meta['shards'])}/{store.num_shards} shards)"
            )

    extra: dict[str, Any] = {}
    try:
        with bar:
            if not pending:
                pass
            elif ray:
                from .cluster import run_on_ray

                del inferer  # the actors open their own
                extra = run_on_ray(
                    spec, store, inputs, pending, batch, ray, ray_actors, ray_cpus, workers, finished, bar.advance, say
                )
            else:
                _run_local(preparer, inferer, store, inputs, pending, batch, workers, finished, bar.advance)
    except KeyboardInterrupt:
        summary = _summary(
            store, spec, this_run, time.perf_counter() - t0, batch, workers, ray, extra, interrupted=True
        )
        store.write_summary(summary)
        n = len(store.meta["shards"])
        raise Interrupted(
            f"interrupted: {n} of {store.num_shards} shards finished and kept, the shard in progress "
            f"discarded; continue with --resume"
        ) from None
    summary = _summary(store, spec, this_run, time.perf_counter() - t0, batch, workers, ray, extra)
    store.write_summary(summary)
    return summary


def _run_local(preparer, inferer, store, inputs, pending, batch, workers, finished, advance) -> None:
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mmdeploy-prepare")
    try:
        for i in pending:
            items = [inputs[k] for k in store.shard_range(i)]
            outputs, errors = process_items(preparer, inferer, items, batch, pool, advance)
            finished(i, outputs, errors)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _summary(store, spec, this_run, seconds, batch, workers, ray, extra, interrupted=False) -> dict[str, Any]:
    from ..common.env import cpu_info

    m = store.meta
    shards = m["shards"]
    return {
        "task": spec.task,
        "model": m["model"],
        "variant": m["variant"],
        "bundle": m["bundle"],
        "runner": f"ray ({ray})" if ray else "local",
        "interrupted": interrupted,
        "inputs": m["inputs"]["count"],
        "skipped_not_images": m["inputs"]["skipped_not_images"],
        "shards": {"done": len(shards), "total": m["num_shards"]},
        "rows": sum(s["rows"] for s in shards.values()),
        "broken": sum(len(s["broken"]) for s in shards.values()),
        "this_run": {
            **this_run,
            "seconds": round(seconds, 3),
            "items_per_s": round(this_run["items"] / seconds, 2) if seconds > 0 and this_run["items"] else None,
        },
        "batch": batch,
        "workers": workers,
        "threads": spec.threads,
        "dim": m.get("dim"),
        "cpu": cpu_info(),
        **extra,
    }


class _Progress:
    """A rich progress bar on stderr (items, items/s, broken, ETA); silent when not a terminal."""

    def __init__(self, total: int, done: int, task: str, enabled: bool = True):
        import sys

        self.total, self.done, self.broken = total, done, 0
        self.live = enabled and sys.stderr.isatty()
        self._bar = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(task),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} items/s  broken {task.fields[broken]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._id = self._bar.add_task(task, total=total, completed=done, rate="-", broken=0)
        self._t0 = time.perf_counter()
        self._n = 0

    def __enter__(self):
        if self._bar:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar:
            self._bar.__exit__(*exc)
        return False

    def advance(self, n: int, broken: int) -> None:
        self._n += n
        self.broken += broken
        if self._bar:
            dt = time.perf_counter() - self._t0
            self._bar.update(self._id, advance=n, rate=f"{self._n / dt:,.0f}" if dt > 0 else "-", broken=self.broken)
