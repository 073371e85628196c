"""The same job on Ray Data: pending shards -> an actor pool -> rows back to the driver, which
writes the shards with the same JobStore (same names, schema, job.json and resume).

Each actor loads the bundle once and runs the local pipeline on one shard per call (decode
threads + inference), so a node does what `mmdeploy embed --out` does on one machine and Ray
only moves paths out and embeddings back (a 512-d float32 row is 2 KB). Input paths must be
readable on every worker (a shared file system: NFS, a fuse-mounted bucket); only the driver
writes the output folder.

Scaling on paper: N nodes of C cores give N * C / cpus_per_actor actors; throughput grows with
actors until the driver's write path (Parquet encode + fsync, ~100 MB/s: ~50k rows/s at 512-d)
or the shared file system's read rate for the images is the limit.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError, ResourceError, require
from .tasks import TaskSpec


class ShardWorker:
    """A Ray actor: one shard's inputs -> one row per input (item, output, error)."""

    def __init__(self, spec: dict[str, Any], batch: int, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        from .tasks import Inferer, Preparer

        self.spec = TaskSpec(**spec)
        self.preparer, self.inferer = Preparer(self.spec), Inferer(self.spec)
        self.batch = batch
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="mmdeploy-prepare")

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .runner import process_items

        items, inputs = [], []
        for shard, first, names in zip(rows["shard"], rows["first"], rows["inputs"]):
            names = [str(n) for n in names]
            inputs += names
            items += [(int(shard), int(first) + j) for j in range(len(names))]
        outputs, errors = process_items(self.preparer, self.inferer, inputs, self.batch, self.pool)
        if self.spec.output_column == "embedding":
            dim = next((len(o) for o in outputs if o is not None), 0)
            out = np.zeros((len(outputs), dim), np.float32)
            for j, o in enumerate(outputs):
                if o is not None:
                    out[j] = o
        else:
            out = np.array(["" if o is None else o for o in outputs], dtype=object)
        return {
            "shard": np.array([s for s, _ in items], np.int64),
            "item": np.array([i for _, i in items], np.int64),
            "output": out,
            "error": np.array(["" if e is None else e for e in errors], dtype=object),
        }


LOCAL_START_TRIES = 3  # Ray's own startup window is a fixed 30 s


def _init(ray, address: str) -> bool:
    """Connect (or start a local instance); True when we started it and must shut it down."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR")
    if address == "local":
        # a local instance sized to this machine; a small object store: only paths and rows travel
        kw.update(num_cpus=os.cpu_count() or 1, include_dashboard=False, object_store_memory=512 * 1024**2)
    else:
        kw.update(address=address)
    for attempt in range(1, LOCAL_START_TRIES + 1):
        try:
            ray.init(**kw)
            return True
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"--ray {address}: cannot connect: {str(exc).splitlines()[0]}") from None
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register and then raises a bare Exception: on a
            # busy machine a local instance can miss that window and start fine on the next try
            if address != "local" or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            if attempt == LOCAL_START_TRIES:
                raise ResourceError(
                    f"--ray local: Ray's local instance did not start in {LOCAL_START_TRIES} tries of 30 s "
                    "(the machine is too busy to start its raylet): retry when it is quieter, or run without --ray"
                ) from None
    return True


def run_on_ray(
    spec: TaskSpec,
    store,
    inputs,
    pending,
    batch: int,
    address: str,
    actors: int | None,
    cpus: float | None,
    workers: int,
    finished: Callable,
    advance: Callable,
    say: Callable,
) -> dict[str, Any]:
    ray = require("ray", "ray")
    require("ray.data", "ray")
    t0 = time.perf_counter()
    started = _init(ray, address)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_cpus = [n["Resources"].get("CPU", 0) for n in nodes] or [1]
        total = sum(node_cpus)
        cpus = cpus or float(min(8, min(node_cpus)))  # one actor per node of <= 8 cores
        if cpus > max(node_cpus):
            raise InputError(f"--ray-cpus {cpus}: no node has that many CPUs (largest: {max(node_cpus):g})")
        actors = actors or max(1, int(total // cpus))
        actor_spec = spec.to_dict()
        if actor_spec["threads"] is None:
            actor_spec["threads"] = max(1, int(cpus))  # inference threads within the actor's share
        say(f"ray: {len(nodes)} node(s), {total:g} CPUs; {actors} actor(s) x {cpus:g} CPUs")
        import logging

        for name in ("ray", "ray.data"):  # its INFO lines would interleave with our per-shard log
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts items; Ray's would interleave with it
        ctx.execution_options.preserve_order = False
        rows = [
            {"shard": i, "first": store.shard_range(i).start, "inputs": [inputs[k] for k in store.shard_range(i)]}
            for i in pending
        ]
        with warnings.catch_warnings():  # max_restarts has no named parameter yet (Ray 2.60)
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                ShardWorker,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus,
                max_restarts=0,  # a failed actor fails the run (resume continues it), never a silent restart
                fn_constructor_kwargs={"spec": actor_spec, "batch": batch, "workers": workers},
            )
        want = {i: len(store.shard_range(i)) for i in pending}
        got: dict[int, list] = {}
        first: list[float] = []  # when the first shard came back, and the items after it: startup vs steady rate
        after = 0
        try:
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for s, item, out, err in zip(b["shard"], b["item"], b["output"], b["error"]):
                    got.setdefault(int(s), []).append((int(item), out, str(err) or None))
                for s in [s for s, v in got.items() if len(v) == want[s]]:
                    done = sorted(got.pop(s), key=lambda t: t[0])
                    errors = [e for _, _, e in done]
                    advance(len(done), sum(e is not None for e in errors))
                    finished(s, [None if e else o for _, o, e in done], errors)
                    if first:
                        after += len(done)
                    else:
                        first.append(time.perf_counter())
        except ray.exceptions.RayError as exc:
            msg = str(exc).strip().splitlines()
            raise InputError(f"ray job failed: {msg[-1] if msg else type(exc).__name__}") from None
        end = time.perf_counter()
        steady = round(after / (end - first[0]), 2) if first and after and end > first[0] else None
        return {
            "ray": {
                "address": address,
                "nodes": len(nodes),
                "cpus": total,
                "actors": actors,
                "cpus_per_actor": cpus,
                "first_shard_s": round(first[0] - t0, 2) if first else None,
                "steady_items_per_s": steady,
            }
        }
    finally:
        if started:
            ray.shutdown()
