"""Captioning pipeline on any backend: caption(images, max_new_tokens, num_beams). No torch.

The bundle has two graphs (see exporter/caption.py): ``encoder`` (pixel_values -> per-layer K/V,
once per image) and ``decoder`` (one step: ids + positions + past K/V [+ cross K/V] -> last
logits + present K/V). Generation (greedy / beam search) is numpy (runtimes/generate.py) with the
checkpoint's generation defaults from the manifest.

KV buffers: on ONNX Runtime each K/V has two buffers preallocated for the whole generation; a
step binds past to one and present to the other (IOBinding), so ORT writes the new cache in place
and no step allocates (the logits buffer and the cross K/V are bound once per batch). On OpenVINO
the inputs are shared with the request (no copy in) and present is copied out (see SessionDecoder).
A beam reorder gathers rows (one copy per step, as in PyTorch's cache reorder).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import BundleError, InputError
from ..bundle import Bundle
from ..generate import GenerationConfig, OnStep, generate
from ..images import load_image
from ..manifest import DECODER_INFO, DICT, GENERATION, check_decoder_blocks
from ..preprocess import ImagePreprocessor
from ..tokenize import bad_unicode_at
from . import register
from .decoders import OnText, decoder_step_feeds
from .pipeline import Pipeline


class SessionDecoder:
    """StepDecoder on a decoder Session (runtimes/generate.py's protocol).

    On ONNX Runtime each K/V has two buffers allocated once per batch, each with room for the whole
    generation: a step binds past to one and present to the other (one IOBinding per batch), so ORT
    writes the new cache in place and no step allocates or copies it; the logits buffer and the cross
    K/V are bound once per batch. On OpenVINO the request shares our input arrays (no copy in) and
    present is copied out: output tensors bound to our buffers were measured to be overwritten when
    another request of the same compiled model ran between two steps. Other backends go through
    ``Session.run``.
    """

    def __init__(self, session, info: dict[str, Any], encoder_kv: dict[str, np.ndarray]):
        self.session = session
        n = int(info["num_layers"])
        self.past_names = [f"past.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        self.present_names = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        self.cross = bool(info["cross_attention"])
        self.heads, self.head_dim = int(info["num_heads"]), int(info["head_dim"])
        self.encoder_kv = encoder_kv  # per image: cross K/V, or GIT's image-token past
        self._ort = getattr(session, "_sess", None)
        if self._ort is not None and not hasattr(self._ort, "io_binding"):
            self._ort = None
        self._ov = None
        compiled = getattr(session, "_compiled", None)
        if compiled is not None and hasattr(compiled, "create_infer_request"):
            # an own request: shared (zero-copy) inputs must not leak into Session.run's copying request
            self._ov = getattr(session, "_caption_request", None)
            if self._ov is None:
                self._ov = session._caption_request = compiled.create_infer_request()
        self._vocab = None  # static logits width: the logits buffer is then bound once per batch
        if self._ort is not None:
            dim = next(o.shape[-1] for o in self._ort.get_outputs() if o.name == "logits")
            self._vocab = dim if isinstance(dim, int) else None
        self.past: dict[str, Any] = {}
        self.fixed: dict[str, Any] = {}

    def start(self, rows: np.ndarray, max_length: int) -> None:
        rows = np.asarray(rows)
        same = all(len(rows) == len(v) and (rows == np.arange(len(v))).all() for v in self.encoder_kv.values())
        sel = {k: v if same else np.ascontiguousarray(v[rows]) for k, v in self.encoder_kv.items()}
        b = len(rows)
        if self.cross:
            self.fixed = sel
            self.past = {n: np.zeros((b, self.heads, 0, self.head_dim), np.float32) for n in self.past_names}
        else:
            self.fixed = {}
            self.past = dict(sel)
        if self._ort is not None:
            self._start_ort(b, max_length)

    # -- ONNX Runtime: one IOBinding and preallocated ping-pong KV buffers per batch -------------
    def _start_ort(self, b: int, max_length: int) -> None:
        from onnxruntime import OrtValue

        self.rows, self.side = b, 0
        self.length = int(next(iter(self.past.values())).shape[2])  # GIT: the image tokens are the first past
        size = b * self.heads * (self.length + max_length) * self.head_dim
        self.buffers = [[np.empty(size, np.float32) for _ in self.past_names] for _ in range(2)]
        for buf, name in zip(self.buffers[0], self.past_names):
            self._view(buf, self.length)[...] = self.past[name]
        self.past = {}
        self.io = self._ort.io_binding()
        self._keep = list(self.fixed.values())  # the OrtValues below borrow these arrays
        for k, v in self.fixed.items():  # cross K/V: bound once per batch
            self.io.bind_ortvalue_input(k, OrtValue.ortvalue_from_numpy(v))
        self.logits = np.empty((b, self._vocab), np.float32) if self._vocab else None
        if self.logits is not None:
            self.io.bind_output("logits", "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        else:
            self.io.bind_output("logits", "cpu")

    def _view(self, buf: np.ndarray, length: int) -> np.ndarray:
        return buf[: self.rows * self.heads * length * self.head_dim].reshape(
            self.rows, self.heads, length, self.head_dim
        )

    def _step_ort(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        io, n_past, n_present = self.io, self.length, self.length + ids.shape[1]
        src, dst = self.buffers[self.side], self.buffers[1 - self.side]
        room = dst[0].size // (self.rows * self.heads * self.head_dim)
        if n_present > room:
            raise InputError(f"the decoder ran past the {room} positions it was given room for")
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("position_ids", pos)
        for name, buf in zip(self.past_names, src):
            io.bind_input(name, "cpu", 0, np.float32, [self.rows, self.heads, n_past, self.head_dim], buf.ctypes.data)
        for name, buf in zip(self.present_names, dst):
            io.bind_output(
                name, "cpu", 0, np.float32, [self.rows, self.heads, n_present, self.head_dim], buf.ctypes.data
            )
        self._ort.run_with_iobinding(io)
        self.side, self.length = 1 - self.side, n_present
        return self.logits if self.logits is not None else io.get_outputs()[0].numpy()

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        pos = np.ascontiguousarray(position_ids, dtype=np.int64)
        if self._ort is not None:
            return self._step_ort(ids, pos)
        feeds = {"input_ids": ids, "position_ids": pos, **self.past, **self.fixed}
        if self._ov is not None:
            res = self._ov.infer(feeds, share_inputs=True, share_outputs=False)
            out = {p.get_any_name(): res[p] for p in res.keys()}
        else:
            out = self.session.run(feeds)
        self.past = {p: np.asarray(out[q]) for p, q in zip(self.past_names, self.present_names)}
        return np.asarray(out["logits"])

    def present(self, name: str) -> np.ndarray:
        """The cache entry ``present.{i}.{key|value}`` after the last step (ORT: a view of its buffer)."""
        i = self.present_names.index(name)
        if self._ort is not None:
            return self._view(self.buffers[self.side][i], self.length)
        return self.past[self.past_names[i]]

    def reorder(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if self._ort is not None:  # gather the surviving beams' rows into the idle buffer
            src, dst = self.buffers[self.side], self.buffers[1 - self.side]
            for a, c in zip(src, dst):
                np.take(self._view(a, self.length), rows, axis=0, out=self._view(c, self.length))
            self.side = 1 - self.side
        else:
            self.past = {k: np.ascontiguousarray(v[rows]) for k, v in self.past.items()}


@register
class CaptionPipeline(Pipeline):
    """Encoder + decoder-step graphs of one caption bundle on one (backend, precision)."""

    family = "caption"
    task = "caption"
    capabilities = frozenset({Capability.CAPTION})
    generative = True
    quantization_policy = "caption"  # recipes, feeds and gates of quantize: exporter/quantization/policies.py
    components = ("encoder", "decoder")  # the graphs, the decoder step last
    info_key = "caption"  # the manifest's decoder facts (layers, heads, cross attention, outputs)
    # required in its manifest and cross-checked against the graphs when the bundle is opened
    manifest_blocks = {"preprocess": DICT, "tokenizer": DICT, "caption": DECODER_INFO, "generation": GENERATION}
    manifest_cross = staticmethod(check_decoder_blocks("caption"))

    def __init__(
        self, bundle: Bundle, backend: str, precision: str, threads: int | None = None, device: str | None = None
    ):
        from tokenizers import Tokenizer

        from ..select import open_sessions

        self.bundle, self.backend, self.precision = bundle, backend, precision
        m = bundle.manifest
        for key in ("preprocess", "tokenizer", self.info_key, "generation"):
            if key not in m:
                raise BundleError(
                    f"{bundle.root}: manifest has no {key!r}: not a {self.family} bundle of this mmdeploy"
                )
        bundle.verify([m["preprocess"]["file"], m["tokenizer"]["file"]])
        self.preprocess = ImagePreprocessor.from_config(
            m["preprocess"]["config"], source=f"{bundle.root}: manifest preprocess.config"
        )
        try:
            self.tokenizer = Tokenizer.from_file(str(bundle.path(m["tokenizer"]["file"])))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
            raise BundleError(
                f"cannot read tokenizer file {bundle.path(m['tokenizer']['file'])}: {' '.join(str(exc).split())}"
            ) from None
        self.info = m[self.info_key]
        self.generation = GenerationConfig.from_dict(m["generation"])
        arts = {}
        for comp in self.components:
            found = bundle.find(comp, backend, precision)
            if not found:
                raise BundleError(f"{bundle.root} has no {comp} for {backend}/{precision}")
            arts[comp] = found[0]
        # the encoder runs once per batch, then the decoder: spinning encoder threads would steal
        # the 2 cores from the first decoder steps (measured: int8 caption 349 -> 319 ms)
        options = {c: {"spin": False} for c in self.components[:-1]} if backend == "onnxruntime" else None
        self.sessions = open_sessions(bundle, arts, threads, device, options=options)
        self.encoder_outputs = list(self.info["encoder_outputs"])

    @property
    def variant(self) -> str:
        return f"{self.backend}/{self.precision}"

    # -- pieces ----------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Any]) -> np.ndarray:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        if len(images) == 0:
            raise InputError("no images given")
        return self.preprocess([load_image(i) for i in images])

    def encode(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        out = self.sessions["encoder"].run({"pixel_values": pixel_values})
        return {n: out[n] for n in self.encoder_outputs}

    def prompt_ids(self, prompt: str | None) -> list[int]:
        ids = list(self.generation.start_ids)
        if prompt:
            if not isinstance(prompt, str):
                raise InputError(f"the prompt is {type(prompt).__name__}, expected a string")
            if (at := bad_unicode_at(prompt)) is not None:  # a shell's undecodable bytes arrive as lone surrogates
                raise InputError(f"the prompt is not valid UTF-8 / Unicode text (at character {at})")
            ids += self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return ids

    def config(
        self, max_new_tokens: int | None = None, num_beams: int | None = None, prompt: str | None = None, **overrides
    ) -> GenerationConfig:
        cfg = self.generation.replace(max_new_tokens=max_new_tokens, num_beams=num_beams, **overrides)
        if prompt:
            cfg = cfg.replace(start_ids=self.prompt_ids(prompt))
        cfg.check()
        return cfg

    def generate_ids(
        self,
        pixel_values: np.ndarray,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        prompt: str | None = None,
        on_step: OnStep | None = None,
        **overrides,
    ) -> list[np.ndarray]:
        """Token ids (start ids included, padding after eos kept) per image, like PyTorch generate."""
        cfg = self.config(max_new_tokens, num_beams, prompt, **overrides)
        kv = self.encode(pixel_values)  # cross.{i}.* (ViT-GPT2, BLIP) or GIT's image-token past.{i}.*
        dec = SessionDecoder(self.sessions["decoder"], self.info, kv)
        return list(generate(dec, len(pixel_values), cfg, on_step))

    def _streamer(self, first: int, n: int, on_text: OnText) -> OnStep:
        """generate's per-step hook -> ``on_text(image index, text so far)`` for rows whose text changed."""
        eos = set(np.atleast_1d(np.asarray(self.generation.eos_token_id, dtype=np.int64)).tolist())
        last = [""] * n
        done = np.zeros(n, dtype=bool)

        def on_step(seqs: np.ndarray) -> np.ndarray:
            for r in range(n):
                if done[r]:
                    continue
                text = self.decode(seqs[r])
                if int(seqs[r, -1]) in eos:
                    done[r] = True
                if text != last[r]:
                    last[r] = text
                    if on_text(first + r, text) is False:
                        done[r] = True
            return done.copy()

        return on_step

    def decode(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    # -- what bench times (benchmarks/bench.py asks these, never a family's name) ------------
    def bench_request(self, data, batch: int):
        """One batch of bench input from a data set: the preprocessed pixels."""
        return self.pixel_values(data.image_batch(batch))

    def bench_feeds(self, request) -> dict[str, dict[str, np.ndarray]]:
        """Feeds of every graph for one request; the decoder's is the step that takes the 8th token."""
        return {"encoder": {"pixel_values": request}, "decoder": decoder_step_feeds(self, request)}

    def bench_generate(self, request, **kw) -> list[np.ndarray]:
        return self.generate_ids(request, **kw)

    # -- public API --------------------------------------------------------------------
    def caption(
        self,
        images: Sequence[Any],
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        prompt: str | None = None,
        batch_size: int = 8,
        on_text: OnText | None = None,
    ) -> list[str]:
        """Images (paths, bytes, PIL images or HxWx3 uint8 arrays) -> one caption each, in order.

        ``on_text(i, text)`` streams: called with image i's text so far each time it grows
        (greedy: every step; beam search: once, at the end); returning False stops image i.
        """
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        if len(images) == 0:
            raise InputError("no images given")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        out: list[str] = []
        for i in range(0, len(images), batch_size):
            px = self.pixel_values(images[i : i + batch_size])
            hook = self._streamer(i, len(px), on_text) if on_text is not None else None
            out += [self.decode(ids) for ids in self.generate_ids(px, max_new_tokens, num_beams, prompt, hook)]
        return out
