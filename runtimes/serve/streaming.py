"""Server-sent events for generation: text pieces while the batch runs, then the whole answer.

The batch's worker thread hands each image's text-so-far to its :class:`TextSink`, which
posts it to the event loop. The event stream sends only a stable prefix (up to the last
space: a later token can still change the last word's bytes), so the pieces of one image
always join to its final caption. When the client goes away the sinks answer False, the
generator stops those rows (or the queued request leaves its queue) and the batch slot is
free again.

    data: {"index": 0, "delta": "a red "}
    data: {"index": 0, "caption": "a red circle", "finish_reason": "stop"}
    data: [DONE]
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from .responses import caption_delta, caption_done, chat_chunk, usage_chunk

__all__ = ["TextSink", "stream_delta", "caption_events", "chat_events"]


class TextSink:
    """Called from the worker thread with an image's text so far; False once the reader left."""

    __slots__ = ("index", "queue", "loop", "gone")

    def __init__(self, index: int, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop):
        self.index, self.queue, self.loop, self.gone = index, queue, loop, False

    def __call__(self, text: str) -> bool:
        if self.gone:
            return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, text))
        except RuntimeError:  # loop closed: nobody reads
            self.gone = True
            return False
        return True


def stream_delta(sent: str, text: str, final: bool = False) -> str:
    """What may be sent now after ``sent``: up to ``text``'s last space (all of it when final)."""
    if not text.startswith(sent):
        return ""
    rest = text[len(sent) :]
    if final:
        return rest
    cut = max(rest.rfind(" "), rest.rfind("\n"))
    return rest[: cut + 1] if cut >= 0 else ""


def sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


async def caption_events(
    task: asyncio.Future,
    queue: asyncio.Queue,
    sinks: list[TextSink],
    error_body: Callable[[BaseException], dict],
    on_done: Callable[[int], None],
) -> AsyncIterator[bytes]:
    """The event stream of one caption request: ``task`` resolves to the captions."""
    n = len(sinks)
    sent = [""] * n
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while True:
            got = await queue.get()
            if got is None:
                break
            i, text = got
            delta = stream_delta(sent[i], text)
            if delta:
                sent[i] += delta
                yield sse(caption_delta(i, delta))
        try:
            caps = task.result()
        except Exception as exc:  # noqa: BLE001 - the stream has started: the error is an event
            yield sse(error_body(exc))
            yield sse(b"[DONE]")
            return
        for i, cap in enumerate(caps):
            rest = stream_delta(sent[i], cap, final=True)
            if rest:
                yield sse(caption_delta(i, rest))
            yield sse(caption_done(i, cap))
        on_done(n)
        yield sse(b"[DONE]")
    finally:  # finished, or the client went away (the stream is cancelled): free the batch slot
        for s in sinks:
            s.gone = True
        if not task.done():
            task.cancel()


async def chat_events(
    task: asyncio.Future,
    queue: asyncio.Queue,
    sink: TextSink,
    head: dict[str, Any],
    error_body: Callable[[BaseException], dict],
    on_done: Callable[[Any], dict | None],
) -> AsyncIterator[bytes]:
    """OpenAI chat.completion.chunk events of one answer: the role, content deltas, the finish
    reason, then (``on_done`` returning usage) a usage chunk, then [DONE]. ``task`` resolves to [Answer]."""

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return sse(chat_chunk(head, delta, finish))

    sent = ""
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            got = await queue.get()
            if got is None:
                break
            delta = stream_delta(sent, got[1])
            if delta:
                sent += delta
                yield chunk({"content": delta})
        try:
            (answer,) = task.result()
        except Exception as exc:  # noqa: BLE001 - the stream has started: the error is an event
            yield sse(error_body(exc))
            yield sse(b"[DONE]")
            return
        rest = stream_delta(sent, answer.text, final=True)
        if rest:
            yield chunk({"content": rest})
        yield chunk({}, answer.finish_reason)
        usage = on_done(answer)
        if usage is not None:
            yield sse(usage_chunk(head, usage))
        yield sse(b"[DONE]")
    finally:  # finished, or the client went away: free the batch slot
        sink.gone = True
        if not task.done():
            task.cancel()
