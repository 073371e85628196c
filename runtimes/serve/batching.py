"""Dynamic batching for the server: requests that arrive together run as one batch.

One :class:`Batcher` per (model, component). Each request hands it a list of items with
:meth:`Batcher.submit`; a collector task on the event loop takes queued entries in
arrival order until ``max_batch`` items are gathered or ``max_wait_ms`` has passed, runs
them with ``run_batch(items)`` in the batcher's own worker thread (one thread per batcher,
so a backend session is never entered twice at once, and the event loop never blocks on
inference), then hands every request its own slice of the results, in order.

``run_batch`` returns one outcome per item: a value, or an exception instance for an item
that failed on its own (a corrupt image fails its request only, never its batch-mates).
If ``run_batch`` raises, every request of that batch gets the exception; the batcher
itself keeps running.

Waiting is adaptive: the collector waits up to ``max_wait_ms`` for more work only while
``arrivals()`` says that other requests are on their way (read, but not yet queued), so a
lone client pays no batching delay. Under load the worker is busy and requests pile up
behind the running batch anyway; the next batch takes them all at once.

The queue is bounded (``max_queue`` items): beyond it :class:`QueueFullError` (HTTP 503 +
Retry-After). :meth:`Batcher.close` stops taking work and, with ``drain=True``, finishes
what is queued first.

Only the standard library: importable without the [serve] extra.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ...errors import MMDeployError

__all__ = ["Batcher", "BatchStats", "ItemError", "QueueFullError", "ShuttingDownError"]

log = logging.getLogger("mmdeploy.serve")


class QueueFullError(MMDeployError):
    """The batcher's queue is full: the client should retry later (503 + Retry-After)."""

    def __init__(self, name: str, depth: int, limit: int, retry_after: float = 1.0):
        super().__init__(f"server busy: {depth} items queued for {name} (limit {limit}); retry later")
        self.retry_after = retry_after


class ShuttingDownError(MMDeployError):
    """The batcher is closing and takes no new work."""


class ItemError(Exception):
    """Item ``index`` of a submitted list failed on its own; ``error`` says why."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(f"item {index}: {error}")
        self.index, self.error = index, error


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    max_batch_seen: int = 0
    failed_batches: int = 0


@dataclass
class _Entry:
    items: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue + collector + one worker thread for one (model, component)."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list], Sequence[Any]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        arrivals: Callable[[], int] | None = None,
        on_batch: Callable[[int, float, list[float]], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.name = name
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._arrivals = arrivals or (lambda: 0)
        self._on_batch = on_batch
        self._queue: deque[_Entry] = deque()
        self._depth = 0  # items queued, not yet running
        self._running = 0  # items in the batch now running
        self._closing = False
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self.stats = BatchStats()

    # -- public --------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Items waiting in the queue (not counting the batch now running)."""
        return self._depth

    @property
    def running(self) -> int:
        return self._running

    def poke(self) -> None:
        """Wake the collector (an awaited arrival went elsewhere or gave up)."""
        if self._event is not None:
            self._event.set()

    async def submit(self, items: Sequence[Any]) -> list:
        """Queue ``items`` and wait for their outcomes (in order).

        Raises :class:`ItemError` for the first item that failed, :class:`QueueFullError`
        when the queue is full, :class:`ShuttingDownError` after :meth:`close`, or what
        ``run_batch`` raised for the whole batch.
        """
        if self._closing:
            raise ShuttingDownError(f"{self.name} is shutting down")
        items = list(items)
        if not items:
            return []
        if self._depth + len(items) > self.max_queue:
            raise QueueFullError(self.name, self._depth, self.max_queue)
        self._ensure_started()
        entry = _Entry(items, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._depth += len(items)
        self._event.set()
        try:
            outcomes = await entry.future
        except asyncio.CancelledError:
            self._forget(entry)
            raise
        for i, out in enumerate(outcomes):
            if isinstance(out, BaseException):
                raise ItemError(i, out)
        return list(outcomes)

    async def close(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Take no new work; with ``drain`` finish the queue first (up to ``timeout`` s)."""
        self._closing = True
        if self._event is not None:
            self._event.set()
        task = self._task
        if task is not None and not task.done():
            if drain:
                try:
                    await asyncio.wait_for(asyncio.shield(task), timeout)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
            if not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
        while self._queue:  # not drained: fail what is left
            e = self._queue.popleft()
            if not e.future.done():
                e.future.set_exception(ShuttingDownError(f"{self.name} shut down before this request ran"))
        self._depth = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals -----------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    def _forget(self, entry: _Entry) -> None:
        try:
            self._queue.remove(entry)
        except ValueError:
            return  # already taken into a batch: its result is dropped
        self._depth -= len(entry.items)

    def _take(self, batch: list[_Entry], n: int) -> tuple[int, bool]:
        """Move queued entries into ``batch`` while they fit; (items now, stopped on a misfit)."""
        while self._queue:
            e = self._queue[0]
            if e.future.done():  # cancelled while queued
                self._queue.popleft()
                self._depth -= len(e.items)
                continue
            if batch and n + len(e.items) > self.max_batch:
                return n, True
            self._queue.popleft()
            self._depth -= len(e.items)
            batch.append(e)
            n += len(e.items)
            if n >= self.max_batch:
                return n, True
        return n, False

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._event.clear()
                await self._event.wait()
            batch: list[_Entry] = []
            n, full = self._take(batch, 0)
            deadline = loop.time() + self.max_wait
            while not full and not self._closing:
                if self._queue:
                    n, full = self._take(batch, n)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self._arrivals() <= 0:
                    break
                self._event.clear()
                try:
                    await asyncio.wait_for(self._event.wait(), remaining)
                except asyncio.TimeoutError:
                    n, full = self._take(batch, n)
                    break
            if batch:
                await self._execute(batch, n)

    async def _execute(self, batch: list[_Entry], n: int) -> None:
        loop = asyncio.get_running_loop()
        items = [it for e in batch for it in e.items]
        start = time.perf_counter()
        waits = [start - e.enqueued for e in batch]
        self._running = n
        error: BaseException | None = None
        outcomes: Sequence[Any] = ()
        try:
            outcomes = await loop.run_in_executor(self._executor, self._call, items)
        except asyncio.CancelledError:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(ShuttingDownError(f"{self.name} shut down while this request ran"))
            raise
        except Exception as exc:  # noqa: BLE001 - the whole batch failed; the batcher lives on
            error = exc
            self.stats.failed_batches += 1
            log.error(
                "batch failed",
                extra={
                    "fields": {
                        "event": "batch_error",
                        "batcher": self.name,
                        "items": n,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                },
                exc_info=not isinstance(exc, MMDeployError),
            )
        finally:
            self._running = 0
        elapsed = time.perf_counter() - start
        self.stats.batches += 1
        self.stats.items += n
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, n)
        if self._on_batch is not None:
            try:
                self._on_batch(n, elapsed, waits)
            except Exception:  # noqa: BLE001 - metrics must not break serving
                log.exception("on_batch callback failed")
        pos = 0
        for e in batch:
            k = len(e.items)
            if not e.future.done():
                if error is not None:
                    e.future.set_exception(error)
                else:
                    e.future.set_result(outcomes[pos : pos + k])
            pos += k

    def _call(self, items: list) -> Sequence[Any]:
        outcomes = self.run_batch(items)
        if len(outcomes) != len(items):
            raise RuntimeError(f"{self.name}: run_batch returned {len(outcomes)} outcomes for {len(items)} items")
        return outcomes
