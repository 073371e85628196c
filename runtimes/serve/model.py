"""One served model: a loaded pipeline, its batchers (one per component) and its label cache.

What a model serves comes from its pipeline's declared capabilities (pipelines/pipeline.py):
any Pipeline subclass serves what it declares, and needs the methods behind it (EMBED_IMAGES:
``preprocess`` + ``run_vision``; EMBED_TEXTS: ``text_inputs`` + ``run_text``; CLASSIFY: both and
``scores``; CAPTION: ``caption``; ANSWER: ``answer_ids`` + ``question_ids``; CHAT: ``chat``).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any, NamedTuple, Protocol

import numpy as np

from ...common.capabilities import Capability
from ...errors import InputError
from ..generate import GenerationConfig, max_new_tokens_limit
from ..images import decode_image_data, load_image
from ..pipelines.pipeline import Pipeline
from ..scoring import l2_normalize
from .batching import Batcher, ItemError
from .config import ServeConfig
from .inputs import ImageRef
from .metrics import Metrics


class ModelHost(Protocol):
    """What a served model asks of the server that holds it (state.ServerState is the one), declared
    here so that this module needs nothing from state.py: state imports model, never the reverse."""

    metrics: Metrics
    decode_pool: Executor  # image decoding + preprocessing, off the event loop

    def arrivals(self) -> int: ...  # requests read but not yet queued (a batcher waits for them)

    def arrived(self, state: dict | None) -> None: ...  # one of them reached its batcher


class ServedModel:
    """A loaded pipeline, its batchers and its label cache; what it serves is what it declares."""

    def __init__(self, name: str, pipeline: Pipeline, cfg: ServeConfig, server: ModelHost):
        if not isinstance(pipeline, Pipeline):
            raise InputError(
                f"model {name!r}: {type(pipeline).__name__} is not a pipeline (subclass "
                "mmdeploy.runtimes.pipelines.pipeline.Pipeline and declare its capabilities)"
            )
        self.name, self.pipe, self.cfg, self.server = name, pipeline, cfg, server
        self.family = pipeline.family or type(pipeline).__name__
        self.variant = pipeline.variant
        self.has_vision = pipeline.can(Capability.EMBED_IMAGES)
        self.has_text = pipeline.can(Capability.EMBED_TEXTS)
        self.has_caption = pipeline.can(Capability.CAPTION)
        # visual question answering (chat completions answer the last user turn with it)
        self.has_answer = pipeline.can(Capability.ANSWER)
        # multi-turn chat (a VLM): each request's whole conversation is rendered and run
        self.has_chat = pipeline.can(Capability.CHAT)
        # streams token by token when the pipeline takes on_text (else the stream is one piece)
        self.can_stream = self.has_caption and _takes(pipeline.caption, "on_text")
        # the most new tokens a request may ask for: the server's cap, within the position table
        gen = pipeline.generation
        room = max_new_tokens_limit(gen) if isinstance(gen, GenerationConfig) else None
        self.max_new_tokens = min(cfg.max_new_tokens, room) if room else cfg.max_new_tokens
        # the family's own scoring rule (CLIP softmax, SigLIP sigmoid with bias, ...), never a copy here
        self.can_classify = pipeline.can(Capability.CLASSIFY)
        self.batchers: dict[str, Batcher] = {}
        for comp, fn, ok in (
            ("vision", self._run_vision, self.has_vision),
            ("text", self._run_text, self.has_text),
            ("caption", self._run_caption, self.has_caption),
            ("answer", self._run_answer, self.has_answer),
            ("chat", self._run_chat, self.has_chat),
        ):
            if ok:
                self.batchers[comp] = Batcher(
                    f"{name}/{comp}",
                    fn,
                    max_batch=cfg.max_batch,
                    max_wait_ms=cfg.max_wait_ms,
                    max_queue=cfg.max_queue,
                    arrivals=server.arrivals,
                    on_batch=server.metrics.batch_hook(name, comp),
                )
        self._labels: OrderedDict[str, np.ndarray] = OrderedDict()
        self._chats: OrderedDict[int, Any] = OrderedDict()  # recent conversations, their KV caches kept
        self.chat_cache_bytes = 0  # what _chats holds: set by the chat worker, read by /metrics

    @property
    def capabilities(self) -> list[str]:
        caps = []
        if self.has_text:
            caps.append("text-embeddings")
        if self.has_vision:
            caps.append("image-embeddings")
        if self.can_classify:
            caps.append("classify")
        if self.has_caption:
            caps.append("caption")
        if self.has_answer:
            caps += ["vqa", "chat"]
        if self.has_chat:
            caps.append("chat")
        return caps

    def card(self) -> dict:
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "mmdeploy",
            "family": self.family,
            "variant": self.variant,
            "capabilities": self.capabilities,
            **({"max_new_tokens": self.max_new_tokens} if self.has_caption or self.has_answer or self.has_chat else {}),
        }

    # -- worker-thread functions (one outcome per item; an exception instance fails that item) --

    def _load(self, ref: ImageRef):
        try:
            if ref.kind == "path":
                return load_image(ref.value, max_pixels=self.cfg.max_pixels)
            return decode_image_data(ref.value, max_pixels=self.cfg.max_pixels)
        except InputError:
            raise
        except MemoryError:
            raise InputError("image too large to decode in memory") from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is bad input
            raise InputError(f"cannot read image: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None

    def _decode_all(self, refs: list[ImageRef], preprocess: bool) -> list:
        """Decode thread pool: images -> preprocessed arrays (or RGB images); ItemError on the first bad one."""
        pre = self.pipe.preprocess if preprocess else None
        out = []
        for i, ref in enumerate(refs):
            try:
                im = self._load(ref)
                out.append(pre.process_one(im) if pre is not None else im)
            except InputError as exc:
                raise ItemError(i, exc) from None
            except MemoryError:
                raise ItemError(i, InputError("image too large to process in memory")) from None
        return out

    def _run_vision(self, arrays: list[np.ndarray]) -> list:
        out: list[Any] = [None] * len(arrays)
        by_shape: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape, []).append(i)
        mb = self.cfg.max_batch
        for idx in by_shape.values():
            for k in range(0, len(idx), mb):
                chunk = idx[k : k + mb]
                x = np.ascontiguousarray(np.stack([arrays[i] for i in chunk]).transpose(0, 3, 1, 2))
                emb = l2_normalize(np.asarray(self.pipe.run_vision({"pixel_values": x}), dtype=np.float32))
                for i, v in zip(chunk, emb):
                    out[i] = v
        return out

    def _run_text(self, texts: list[str]) -> list:
        out: list[Any] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # little padding per chunk
        mb = self.cfg.max_batch
        for k in range(0, len(order), mb):
            idx = order[k : k + mb]
            try:
                got = self._embed_text_chunk([texts[i] for i in idx])
            except Exception:  # noqa: BLE001 - one bad item must not fail the others: retry each alone
                got = []
                for i in idx:
                    try:
                        got += self._embed_text_chunk([texts[i]])
                    except Exception as exc:  # noqa: BLE001 - fails this item only
                        got.append(exc)
            for i, r in zip(idx, got):
                out[i] = r
        return out

    def _embed_text_chunk(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        feeds = self.pipe.text_inputs(texts)
        emb = l2_normalize(np.asarray(self.pipe.run_text(feeds), dtype=np.float32))
        mask = feeds.get("attention_mask")
        return [(v, int(mask[j].sum()) if mask is not None else 0) for j, v in enumerate(emb)]

    def _run_caption(self, items: list[tuple[Any, int | None, int | None, Any]]) -> list:
        out: list[Any] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (_, mnt, beams, _sink) in enumerate(items):
            groups.setdefault((mnt, beams), []).append(i)
        mb = self.cfg.max_batch
        for (mnt, beams), idx in groups.items():
            for k in range(0, len(idx), mb):
                chunk = idx[k : k + mb]
                sinks = [items[i][3] for i in chunk]
                kw = {}
                if self.can_stream and any(s is not None for s in sinks):
                    kw["on_text"] = lambda j, text, sinks=sinks: sinks[j](text) if sinks[j] is not None else None
                try:
                    caps = self.pipe.caption([items[i][0] for i in chunk], max_new_tokens=mnt, num_beams=beams, **kw)
                    caps = [caps] if isinstance(caps, str) else list(caps)
                    if len(caps) != len(chunk):
                        raise RuntimeError(f"caption returned {len(caps)} captions for {len(chunk)} images")
                except Exception as exc:  # noqa: BLE001 - fails this group only
                    caps = [exc] * len(chunk)
                for i, c in zip(chunk, caps):
                    out[i] = c if isinstance(c, BaseException) else _caption_text(c)
        return out

    def _run_answer(self, items: list[tuple[Any, str, int | None, Any]]) -> list:
        """(image, question, max new tokens, sink) -> Answer per item; groups share max new tokens."""
        out: list[Any] = [None] * len(items)
        groups: dict[int | None, list[int]] = {}
        for i, (_, _, mnt, _) in enumerate(items):
            groups.setdefault(mnt, []).append(i)
        gen = self.pipe.generation
        eos = set(int(t) for t in np.atleast_1d(gen.eos_token_id))
        start = len(gen.start_ids)
        for mnt, idx in groups.items():
            for k in range(0, len(idx), self.cfg.max_batch):
                chunk = idx[k : k + self.cfg.max_batch]
                sinks = [items[i][3] for i in chunk]
                kw = {}
                if any(s is not None for s in sinks):
                    kw["on_text"] = lambda j, text, sinks=sinks: sinks[j](text) if sinks[j] is not None else None
                try:
                    seqs = self.pipe.answer_ids(
                        [items[i][0] for i in chunk],
                        [items[i][1] for i in chunk],
                        max_new_tokens=mnt,
                        batch_size=len(chunk),
                        **kw,
                    )
                except Exception as exc:  # noqa: BLE001 - fails this group only
                    seqs = [exc] * len(chunk)
                for i, seq in zip(chunk, seqs):
                    if isinstance(seq, BaseException):
                        out[i] = seq
                        continue
                    new = [int(t) for t in seq[start:]]
                    stop = next((n for n, t in enumerate(new) if t in eos), None)
                    out[i] = Answer(
                        self.pipe.decode(seq),
                        len(new) if stop is None else stop + 1,
                        "length" if stop is None else "stop",
                    )
        return out

    def _run_chat(self, items: list[tuple]) -> list:
        """(history, images, text, turn images, options, sink) -> Answer per item, one conversation at a time.
        Each request carries its whole conversation; the one among the recently run conversations
        that shares the most leading messages with it is continued, so only the tokens after
        their common prefix are prefilled (usage.prompt_tokens_details.cached_tokens)."""
        out: list[Any] = []
        for history, images, text, turn_images, opts, sink in items:
            try:
                conv = self._conversation_for(history)
                conv.restore(history, images)
                sent, left = "", False
                for piece in conv.send(text, images=turn_images, stream=True, **opts):
                    sent += piece
                    if sink is not None and sink(sent) is False:
                        left = True  # the reader left: stop generating
                        break
                self._keep_conversation(conv)
                out.append(
                    Answer(sent, 0, "stop", conv.last_cached)
                    if left
                    else Answer(
                        self.pipe.decode(conv.generated), len(conv.generated), conv.finish_reason, conv.last_cached
                    )
                )
            except Exception as exc:  # noqa: BLE001 - fails this item only
                out.append(exc)
        return out

    def _conversation_for(self, history: list[dict]) -> Any:
        """The cached conversation sharing the most leading messages with ``history`` (taken out of
        the cache while it runs), else a new one."""
        from ..pipelines.vlm import common_prefix

        def shared(conv) -> int:
            return common_prefix(history, conv.messages)

        best = max(self._chats, key=lambda k: shared(self._chats[k]), default=None)
        if best is not None and shared(self._chats[best]):
            conv = self._chats.pop(best)
            self.chat_cache_bytes = sum(c.cache_bytes for c in self._chats.values())
            return conv
        return self.pipe.chat()

    def _keep_conversation(self, conv: Any) -> None:
        """Newest last; the oldest go while the caches pass --chat-cache-mb."""
        budget = self.cfg.chat_cache_mb * 1e6
        if conv.cache_bytes > budget:
            return
        self._chats[id(conv)] = conv
        while sum(c.cache_bytes for c in self._chats.values()) > budget:
            self._chats.popitem(last=False)
        self.chat_cache_bytes = sum(c.cache_bytes for c in self._chats.values())

    # -- async API used by the routes ----------------------------------------------------------

    async def _decode(self, refs: list[ImageRef], preprocess: bool) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.server.decode_pool, self._decode_all, refs, preprocess)

    async def embed_texts(self, texts: list[str], state: dict | None = None) -> list[tuple[np.ndarray, int]]:
        self.server.arrived(state)
        return await self.batchers["text"].submit(texts)

    async def embed_images(self, refs: list[ImageRef], state: dict | None = None) -> list[np.ndarray]:
        arrays = await self._decode(refs, preprocess=True)
        self.server.arrived(state)
        return await self.batchers["vision"].submit(arrays)

    async def label_embeddings(self, prompts: list[str], state: dict | None = None) -> np.ndarray:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._labels))
        if missing:
            got = await self.embed_texts(missing, state)
            for p, (v, _) in zip(missing, got):
                self._labels[p] = v
        vecs = []
        for p in prompts:
            v = self._labels.get(p)
            if v is None:  # evicted meanwhile by a concurrent request: recompute
                v = (await self.embed_texts([p]))[0][0]
            else:
                self._labels.move_to_end(p)
            vecs.append(v)
        while len(self._labels) > self.cfg.label_cache_size:
            self._labels.popitem(last=False)
        return np.stack(vecs)

    async def caption(
        self, refs: list[ImageRef], mnt: int | None, beams: int | None, state: dict | None = None
    ) -> list[str]:
        return await self.caption_images(await self.decode_images(refs), mnt, beams, state)

    async def decode_images(self, refs: list[ImageRef]) -> list:
        """RGB images (ItemError naming the first bad one): a stream checks them before it starts."""
        return await self._decode(refs, preprocess=False)

    async def caption_images(
        self, images: list, mnt: int | None, beams: int | None, state: dict | None = None, sinks: list | None = None
    ) -> list[str]:
        """Captions of decoded images; ``sinks[i](text so far)`` streams image i (False: its reader left)."""
        self.server.arrived(state)
        sinks = sinks or [None] * len(images)
        return await self.batchers["caption"].submit([(im, mnt, beams, s) for im, s in zip(images, sinks)])

    async def answer_images(
        self, images: list, questions: list[str], mnt: int | None, state: dict | None = None, sinks: list | None = None
    ) -> list[Answer]:
        """Answers about decoded images; ``sinks[i](text so far)`` streams pair i."""
        self.server.arrived(state)
        sinks = sinks or [None] * len(images)
        return await self.batchers["answer"].submit([(im, q, mnt, s) for im, q, s in zip(images, questions, sinks)])

    async def chat(
        self,
        history: list[dict],
        images: list,
        text: str,
        turn_images: list,
        opts: dict,
        state: dict | None = None,
        sink: Any = None,
    ) -> list[Answer]:
        """One chat turn after ``history`` (template messages; ``images`` theirs, decoded)."""
        self.server.arrived(state)
        return await self.batchers["chat"].submit([(history, images, text, turn_images, opts, sink)])

    async def warmup(self) -> None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, "PNG")
        ref = ImageRef("data", base64.b64encode(buf.getvalue()).decode())
        if self.has_vision:
            await self.embed_images([ref])
        if self.has_text:
            await self.embed_texts(["warm-up"])

    async def close(self, drain: bool = True) -> None:
        await asyncio.gather(*(b.close(drain=drain) for b in self.batchers.values()))


class Answer(NamedTuple):
    text: str
    completion_tokens: int  # generated, eos included
    finish_reason: str  # "stop" (eos) or "length"
    cached_tokens: int = 0  # prompt tokens served from a kept KV cache


def _takes(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _caption_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):
        for k in ("caption", "text", "generated_text"):
            if isinstance(c.get(k), str):
                return c[k]
    return str(c)
