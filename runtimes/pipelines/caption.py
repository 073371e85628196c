"""Captioning pipeline on any backend: caption(images, max_new_tokens, num_beams). No torch.

The bundle has two graphs (see exporter/caption.py): ``encoder`` (pixel_values -> per-layer K/V,
once per image) and ``decoder`` (one step: ids + positions + past K/V [+ cross K/V] -> last
logits + present K/V). Generation (greedy / beam search) is numpy (runtimes/generate.py) with the
checkpoint's generation defaults from the manifest.

KV cache: the backend keeps it between steps (``Session.open_decoder``, runtimes/backends/): on
ONNX Runtime each K/V has two buffers preallocated for the whole generation and a step writes the
new cache in place (IOBinding); on OpenVINO the inputs are shared with an own infer request and
present is copied out. A beam reorder gathers rows (one copy per step, as in PyTorch's cache reorder).
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
    """StepDecoder (runtimes/generate.py's protocol) on a decoder-step Session: which inputs are the
    cache and which stay fixed for a batch (cross K/V, or GIT's image tokens as the first past).
    How the cache is kept between steps is the backend's (``Session.open_decoder``): ONNX Runtime
    binds preallocated ping-pong buffers, OpenVINO runs its own infer request, others ``run()``.
    """

    def __init__(self, session, info: dict[str, Any], encoder_kv: dict[str, np.ndarray]):
        n = int(info["num_layers"])
        self.past_names = [f"past.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        self.present_names = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        self.cross = bool(info["cross_attention"])
        self.heads, self.head_dim = int(info["num_heads"]), int(info["head_dim"])
        self.encoder_kv = encoder_kv  # per image: cross K/V, or GIT's image-token past
        self.backend_decoder = session.open_decoder(list(zip(self.past_names, self.present_names)))

    def start(self, rows: np.ndarray, max_length: int) -> None:
        rows = np.asarray(rows)
        same = all(len(rows) == len(v) and (rows == np.arange(len(v))).all() for v in self.encoder_kv.values())
        sel = {k: v if same else np.ascontiguousarray(v[rows]) for k, v in self.encoder_kv.items()}
        b = len(rows)
        if self.cross:
            fixed = sel
            past = {n: np.zeros((b, self.heads, 0, self.head_dim), np.float32) for n in self.past_names}
        else:
            fixed, past = {}, dict(sel)
        self.backend_decoder.start(past, fixed, max_length)

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        pos = np.ascontiguousarray(position_ids, dtype=np.int64)
        return self.backend_decoder.step({"input_ids": ids, "position_ids": pos})

    def present(self, name: str) -> np.ndarray:
        """The cache entry ``present.{i}.{key|value}`` after the last step (ORT: a view of its buffer)."""
        return self.backend_decoder.present(name)

    def reorder(self, rows: np.ndarray) -> None:
        self.backend_decoder.reorder(np.asarray(rows))


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
