"""Multi-turn visual chat with a decoder-only VLM (SmolVLM / Idefics3) on any backend. No torch.

Three graphs (see exporter/families/vlm.py): ``vision`` (image -> the embeddings of its
``<image>`` placeholders), ``embed`` (token ids -> embeddings) and one ``decoder`` graph for the
prefill and every step, with the KV cache as inputs and outputs. The prompt is the checkpoint's
own chat template rendered with jinja2 (as transformers renders it), each ``<image>`` expanded
the way the processor expands it for an unsplit image.

A :class:`Conversation` keeps its token ids and KV cache between turns: a new turn renders the
whole history, keeps the cache for the longest prefix it shares with what was already run, and
prefills only the rest (the new user turn, and at most a few tokens where the template renders
the last answer differently from how it was generated). ``max_tokens`` bounds a conversation;
a turn that would pass it is refused with a clear error (start a new conversation).

The cache is the backend's (``Session.open_decoder``, one decoder per conversation): ONNX Runtime
binds buffers sized for the turn and writes each step's cache in place (IOBinding); OpenVINO,
where the manifest records the decoder stateful (``chat.kv_cache``), keeps it as the infer
request's state (ReadValue / Assign) and a step feeds only its new token. Bundles without the
record run the decoder as it was exported, the cache passed in and out each step.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import BundleError, InputError
from ..backends import get_backend
from ..bundle import Bundle
from ..images import load_image
from ..manifest import INT, POSITIONS, STR, TOKEN_ID, list_of, obj, one_of
from ..session import Decoder, RunDecoder
from . import register
from .pipeline import Pipeline

MAX_TURN_CHARS = 65_536
# Tiles per vision call (a split image is up to 17). Each tile is 1,024 tokens, already a full GEMM,
# so batching more buys no speed and holds more activations: the 256M twin's 17 tiles (ORT fp32,
# 2 threads) took 31.0 / 30.2 / 27.2 / 28.3 s at 8 / 4 / 2 / 1 tiles a call, peak RSS +2.1 / +1.1
# / +0.63 / +0.38 GB over the loaded model
VISION_BATCH = 2


# -- preprocessing and prompt (shared with the exporter: one implementation) -------------------


MAX_SIDE = 4096  # the processor's absolute bound on a resized image's side


def _fit_longest(w: int, h: int, long: int) -> tuple[int, int]:
    """The processor's first resize: the longest edge to ``long``, the other side even, aspect kept,
    then both below MAX_SIDE."""
    if w >= h:
        nw, nh = long, int(long / (w / h))
        nh += nh % 2
    else:
        nh, nw = long, int(long * (w / h))
        nw += nw % 2
    if max(nw, nh) > MAX_SIDE:
        nw, nh = (MAX_SIDE, int(MAX_SIDE / (nw / nh))) if nw >= nh else (int(MAX_SIDE * (nw / nh)), MAX_SIDE)
    return max(nw, 1), max(nh, 1)


def _tile_multiple(w: int, h: int, tile: int) -> tuple[int, int]:
    """The processor's resize for splitting: both sides up to multiples of the tile."""
    up = lambda x: -(-x // tile) * tile  # noqa: E731
    if w >= h:
        nw = up(w)
        return nw, up(int(nw / (w / h)))
    nh = up(h)
    return up(int(nh * (w / h))), nh


def _split_grid(w: int, h: int, tile: int) -> tuple[int, int]:
    W, H = _tile_multiple(w, h, tile)
    return (H // tile, W // tile) if W > tile or H > tile else (0, 0)


def image_grid(size: tuple[int, int], cfg: dict[str, Any], split: bool) -> tuple[int, int]:
    """(rows, cols) of tiles the processor cuts an image of ``size`` (w, h) into; (0, 0): one
    global image, no tiles (splitting off, or an image that fits one tile)."""
    return _split_grid(*_fit_longest(*size, int(cfg["longest_edge"])), int(cfg["tile"])) if split else (0, 0)


def image_tiles(images: Sequence[Any], cfg: dict[str, Any], split: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """SmolVLM / Idefics3's image processor: the longest edge to ``longest_edge``; then, splitting,
    both sides up to tile multiples, cut into rows x cols tiles (row-major) followed by the whole
    image resized to one tile; not splitting, one square tile. LANCZOS on uint8, rescale,
    normalize. -> pixels (all tiles of all images, in order) and each image's (rows, cols)."""
    tile = int(cfg["tile"])
    mean = np.asarray(cfg["image_mean"], np.float32)
    std = np.asarray(cfg["image_std"], np.float32)
    resample = int(cfg["resample"])
    out, grids = [], []
    for im in images:
        im = load_image(im)
        im = im.resize(_fit_longest(*im.size, int(cfg["longest_edge"])), resample=resample)
        rows, cols = _split_grid(*im.size, tile) if split else (0, 0)
        parts = []
        if rows:
            im = im.resize(_tile_multiple(*im.size, tile), resample=resample)
            a = np.asarray(im)
            parts = [a[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(rows) for c in range(cols)]
        parts.append(np.asarray(im.resize((tile, tile), resample=resample)))
        for a in parts:
            x = a.astype(np.float32) * np.float32(cfg["rescale_factor"])
            out.append(((x - mean) / std).transpose(2, 0, 1))
        grids.append((rows, cols))
    if not out:
        raise InputError("no images given")
    return np.ascontiguousarray(np.stack(out), dtype=np.float32), grids


def vlm_pixels(images: Sequence[Any], cfg: dict[str, Any], split: bool = False) -> np.ndarray:
    """The vision graph's ``pixel_values`` for ``images`` (see :func:`image_tiles`)."""
    return image_tiles(images, cfg, split)[0]


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The checkpoint's chat template, rendered as transformers renders it (sandboxed jinja2)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise InputError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise BundleError(f"the chat template failed: {exc}") from None


def expand_images(text: str, seq_len: int, grids: int | Sequence[tuple[int, int]]) -> str:
    """Each ``<image>`` of the rendered prompt -> the processor's block for that image: per tile
    ``<fake_token_around_image><row_r_col_c>`` + ``seq_len`` x ``<image>`` (a newline after each
    row), then the global image's block. ``grids``: each image's (rows, cols), or a count of
    unsplit images."""
    grids = [(0, 0)] * grids if isinstance(grids, int) else list(grids)
    parts = text.split("<image>")
    if len(parts) - 1 != len(grids):
        raise InputError(f"the prompt has {len(parts) - 1} image placeholders for {len(grids)} images")
    fake, img = "<fake_token_around_image>", "<image>" * seq_len
    glob = fake + "<global-img>" + img + fake
    out = [parts[0]]
    for (rows, cols), rest in zip(grids, parts[1:]):
        if rows or cols:
            tiles = "".join(
                "".join(f"{fake}<row_{r + 1}_col_{c + 1}>{img}" for c in range(cols)) + "\n" for r in range(rows)
            )
            out.append(tiles + "\n" + glob)
        else:
            out.append(glob)
        out.append(rest)
    return "".join(out)


def cache_pairs(n_layers: int) -> list[tuple[str, str]]:
    """The decoder's (past, present) cache names, K then V per layer: the bundle's contract."""
    return [(f"past.{i}.{x}", f"present.{i}.{x}") for i in range(n_layers) for x in ("key", "value")]


def query_heads(chat: dict[str, Any]) -> int:
    """The decoder's query heads: the manifest's ``num_heads``; bundles written before it, hidden / head_dim."""
    return int(chat.get("num_heads") or int(chat["hidden_size"]) // int(chat["head_dim"]))


def common_prefix(a: Sequence, b: Sequence) -> int:
    """How many leading items two sequences share (token ids, image digests, messages)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _image_key(im) -> bytes:
    return hashlib.blake2b(f"{im.mode}{im.size}".encode() + im.tobytes(), digest_size=16).digest()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def pick_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator | None) -> int:
    """Greedy (temperature 0) or sampled from the top-p nucleus of softmax(logits / temperature)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    p = _softmax(logits.astype(np.float64) / temperature)
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int((rng or np.random.default_rng()).choice(len(p), p=p))


class Conversation:
    """One conversation's messages, images, token ids and KV cache (see the module docstring)."""

    def __init__(self, pipe: VlmPipeline, max_tokens: int | None = None, system: str | None = None):
        self.pipe = pipe
        limit = int(pipe.generation["max_positions"])
        self.max_tokens = min(int(max_tokens), limit) if max_tokens else limit
        self.messages: list[dict] = (
            [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        )
        self.images: list[Any] = []
        self._features: list[np.ndarray] = []  # per image (tiles, image tokens, hidden), computed once
        self._keys: list[bytes] = []  # per image: a digest of its pixels (restore() keeps what matches)
        self.grids: list[tuple[int, int]] = []  # per image: (rows, cols) of its tiles, (0, 0) unsplit
        self.ids: list[int] = []  # the tokens the cache holds
        self.decoder: Decoder | None = None  # the backend's, holding the KV cache; opened on the first turn
        self.last_prefill = 0  # tokens the last turn prefilled (the rest came from the cache)
        self.last_cached = 0  # prompt tokens the last turn took from the cache

    def reset(self) -> None:
        system = [m for m in self.messages if m["role"] == "system"]
        if self.decoder is not None:
            self.decoder.close()
        self.__init__(self.pipe, self.max_tokens, None)
        self.messages = system

    def restore(self, messages: list[dict], images: Sequence[Any]) -> None:
        """Continue from a conversation given whole (template messages and their images, in order),
        as a server that receives the history with every request does. What this conversation
        already ran stays cached as far as it is the same: its leading images that are the same
        pixels keep their embeddings, and the next turn prefills only the tokens after the prefix
        the two prompts share (all of it for a fresh conversation)."""
        decoded = [load_image(im) for im in images]
        keys = [_image_key(im) for im in decoded]
        same = common_prefix(keys, self._keys)
        if same < len(self._keys):  # a changed image: the cache is good up to its first <image> token
            before = sum(len(f) * f.shape[1] for f in self._features[:same])
            pos = [p for p, t in enumerate(self.ids) if t == self.pipe.image_token_id]
            self._cut(pos[before] if before < len(pos) else len(self.ids))
        fresh = self._encode(decoded[same:])
        self.messages, self.images, self._keys = list(messages), decoded, keys
        self._features = self._features[:same] + fresh
        self.grids = self.grids[:same] + self.pipe.grids(decoded[same:])

    def _encode(self, images: list) -> list[np.ndarray]:
        """Per image: its tiles' embeddings (one vision run for all of them)."""
        if not images:
            return []
        feats = self.pipe.image_features(images)
        sizes = [r * c + 1 for r, c in self.pipe.grids(images)]
        return np.split(feats, np.cumsum(sizes)[:-1])

    @property
    def cache_bytes(self) -> int:
        """What keeping this conversation holds: KV cache, image features and the decoded images (a 2000 px
        photo is 12 MB of RGB against a few KB of a tiny model's KV; uncounted, --chat-cache-mb bounded nothing)."""
        pixels = sum(im.width * im.height * len(im.getbands()) for im in self.images)
        kv = self.decoder.nbytes if self.decoder is not None else 0
        return kv + sum(f.nbytes for f in self._features) + pixels

    def _cut(self, k: int) -> None:
        """Keep the first k cached tokens."""
        self.ids = self.ids[:k]
        if self.decoder is not None:
            self.decoder.trim(k)

    def _open(self, room: int) -> Decoder:
        """This conversation's decoder with room for ``room`` more positions."""
        if self.decoder is None:
            self.decoder = self.pipe.open_decoder()
            self.decoder.start(self.pipe.empty_cache(), {}, room)
        else:
            self.decoder.reserve(room)
        return self.decoder

    def kv(self, name: str) -> np.ndarray:
        """The cache of past input ``name`` (a copy, or a view of the backend's buffer)."""
        return self.decoder.present(name.replace("past", "present", 1))

    def send(
        self,
        text: str,
        images: Sequence[Any] = (),
        max_new_tokens: int | None = None,
        stream: bool = False,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ):
        """A user turn -> the answer (str), or with ``stream`` a generator of text pieces that join to it.
        Images are attached before the text, in order."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("a message must be non-empty text")
        if len(text) > MAX_TURN_CHARS:
            raise InputError(f"a message is at most {MAX_TURN_CHARS} characters, got {len(text)}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise InputError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature} / {top_p}")
        pieces = self._turn(text, list(images), max_new_tokens, temperature, top_p, seed)
        if stream:
            return pieces
        return "".join(pieces)

    def _turn(self, text, images, max_new_tokens, temperature, top_p, seed) -> Iterator[str]:
        pipe = self.pipe
        t0 = time.perf_counter()
        decoded = [load_image(im) for im in images]  # bad images fail before any state changes
        msg = {"role": "user", "content": [{"type": "image"} for _ in decoded] + [{"type": "text", "text": text}]}
        messages, all_images = self.messages + [msg], self.images + decoded
        grids = self.grids + pipe.grids(decoded)
        ids = pipe.prompt_ids(messages, grids)
        n_new = pipe.new_tokens(max_new_tokens)
        if len(ids) + n_new > self.max_tokens:
            raise InputError(
                f"this turn needs {len(ids)} + {n_new} tokens; the conversation holds {self.max_tokens}: "
                "start a new conversation (or ask for fewer new tokens)"
            )
        features = self._features + self._encode(decoded)
        k = min(common_prefix(self.ids, ids), len(ids) - 1)  # at least one token to prefill
        self._cut(k)
        self.messages, self.images, self._features, self.grids = messages, all_images, features, grids
        self._keys = self._keys + [_image_key(im) for im in decoded]
        return self._generate(ids, k, n_new, temperature, top_p, seed, t0)

    def _generate(self, ids, k, n_new, temperature, top_p, seed, t0: float) -> Iterator[str]:
        pipe = self.pipe
        rng = np.random.default_rng(seed) if temperature > 0 else None
        emb = pipe.embed(ids[k:])
        img_pos = [p for p, t in enumerate(ids) if t == pipe.image_token_id]
        if img_pos:
            feats = np.concatenate([f.reshape(-1, f.shape[-1]) for f in self._features])
            if len(feats) != len(img_pos):
                raise BundleError(f"{len(img_pos)} image tokens for {len(feats)} image embeddings")
            rows = [r for r, p in enumerate(img_pos) if p >= k]
            if rows:
                emb[0, [img_pos[r] - k for r in rows]] = feats[rows]
        self.last_prefill, self.last_cached = len(ids) - k, k
        dec = self._open(len(ids) - k + n_new + 1)
        logits = dec.step({"inputs_embeds": emb, "position_ids": np.arange(k, len(ids), dtype=np.int64)[None]})
        t_first = time.perf_counter()
        self.ids = list(ids)
        eos = set(pipe.generation["eos_token_id"])
        gen: list[int] = []
        sent = ""
        for _ in range(n_new):
            tok = pick_token(logits[0], temperature, top_p, rng)
            gen.append(tok)
            if tok in eos:
                self.ids.append(tok)  # the cache will hold it after the next step: feed it now
                break
            text = pipe.decode(gen)
            if text.startswith(sent) and not text.endswith("\ufffd") and len(text) > len(sent):
                yield text[len(sent) :]
                sent = text
            logits = dec.step(
                {"inputs_embeds": pipe.embed([tok]), "position_ids": np.asarray([[len(self.ids)]], np.int64)}
            )
            self.ids.append(tok)
        if gen and gen[-1] in eos:  # run the eos token too, so the cache matches self.ids
            dec.step(
                {"inputs_embeds": pipe.embed([gen[-1]]), "position_ids": np.asarray([[len(self.ids) - 1]], np.int64)}
            )
        self.generated = gen
        # time to first token (images, embeddings, prefill: the first logits) and the decode steps after it
        self.timing = {
            "prefill_tokens": len(ids) - k,
            "ttft_s": t_first - t0,
            "decode_steps": len(gen),
            "decode_s": time.perf_counter() - t_first,
        }
        answer = pipe.decode(gen)
        self.finish_reason = "stop" if gen and gen[-1] in eos else "length"
        self.messages = self.messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        if answer.startswith(sent) and len(answer) > len(sent):
            yield answer[len(sent) :]


KV_PRECISIONS = ("fp32", "fp16", "u8")
# how the exporter wants the decoder's cache kept: stateful on these backends, in this precision
# (OpenVINO's KV_CACHE_PRECISION: it acts only where the CPU plugin fuses attention into SDPA, as
# fused_attention makes it; u8 on the SmolVLM-256M twin kept fp32's greedy tokens but was not clearly
# faster before 2,000 tokens: fp32 is written);
# shared_buffer: the backends whose decoder graphs were written to append to one cache buffer in place
# (their artifacts say so in runtime.kv_cache: the exporter's record of what it asked for)
# fused_attention: the backends whose stateful decoder gets its attention as one op at load (OpenVINO's
# ScaledDotProductAttention, which the CPU plugin fuses with the cache: runtimes/backends/openvino.py)
KV_CACHE = obj(
    {"stateful": list_of(STR)},
    {"precision": one_of(*KV_PRECISIONS), "shared_buffer": list_of(STR), "fused_attention": list_of(STR)},
)
CHAT_INFO = obj(
    {
        "template_file": STR,
        "image_seq_len": POSITIONS,
        "image_token_id": TOKEN_ID,
        "num_layers": INT,
        "num_kv_heads": INT,
        "head_dim": INT,
    },
    {"kv_cache": KV_CACHE, "num_heads": INT, "vision_attention": obj({"num_heads": INT, "fused": list_of(STR)})},
)


@register
class VlmPipeline(Pipeline):
    """``vision`` + ``embed`` + ``decoder`` graphs of one VLM bundle on one (backend, precision)."""

    family = "vlm"
    task = "chat"
    capabilities = frozenset({Capability.CHAT})
    generative = True
    components = ("vision", "embed", "decoder")
    quantization_policy = "vlm"  # recipes, feeds and gates of quantize: exporter/quantization/policies.py
    manifest_blocks = {"chat": CHAT_INFO}

    def __init__(
        self, bundle: Bundle, backend: str, precision: str, threads: int | None = None, device: str | None = None
    ):
        """Images are split into tiles when the checkpoint's processor does (``do_image_splitting``);
        set ``image_splitting = False`` for one tile per image (fewer tokens, less detail).
        ``kv_in_place = False`` runs the decoder as exported instead, the whole cache in and out of
        every step (the reference the fast paths are tested against)."""
        from tokenizers import Tokenizer

        from ..select import open_sessions

        self.bundle, self.backend, self.precision = bundle, backend, precision
        m = bundle.manifest
        for key in ("preprocess", "tokenizer", "chat", "generation"):
            if key not in m:
                raise BundleError(f"{bundle.root}: manifest has no {key!r}: not a vlm bundle of this mmdeploy")
        self.info, self.generation, self.pre = m["chat"], m["generation"], m["preprocess"]["config"]
        self.image_splitting = bool(self.pre.get("do_image_splitting", False))
        bundle.verify([m["tokenizer"]["file"], self.info["template_file"]])
        try:
            self.tokenizer = Tokenizer.from_file(str(bundle.path(m["tokenizer"]["file"])))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
            raise BundleError(
                f"cannot read tokenizer file {bundle.path(m['tokenizer']['file'])}: {' '.join(str(exc).split())}"
            ) from None
        self.template = bundle.path(self.info["template_file"]).read_text()
        self.image_token_id = int(self.info["image_token_id"])
        self.n_layers, self.kv_heads, self.head_dim = (
            int(self.info["num_layers"]),
            int(self.info["num_kv_heads"]),
            int(self.info["head_dim"]),
        )
        self.cache_pairs = cache_pairs(self.n_layers)
        self.past_names = [p for p, _ in self.cache_pairs]
        self.present_names = [q for _, q in self.cache_pairs]
        arts = {}
        for comp in self.components:
            found = bundle.find(comp, backend, precision)
            if not found:
                raise BundleError(f"{bundle.root} has no {comp} for {backend}/{precision}")
            arts[comp] = found[0]
        options: dict[str, dict] = (
            {"vision": {"spin": False}, "embed": {"spin": False}} if backend == "onnxruntime" else {}
        )
        kv = self.info.get("kv_cache") or {}
        # stateful where the bundle asks for it and the backend can: a record the old bundles lack
        self.kv_state = backend in kv.get("stateful", ()) and get_backend(backend).capabilities.kv_state
        if self.kv_state:
            options["decoder"] = {"kv_state": self.cache_pairs, "kv_precision": kv.get("precision", "fp32")}
            if backend in kv.get("fused_attention", ()):
                options["decoder"]["kv_attention"] = (query_heads(self.info), self.kv_heads, self.head_dim)
        self.kv_in_place = True
        self.sessions = open_sessions(bundle, arts, threads, device, options=options)

    @property
    def variant(self) -> str:
        return f"{self.backend}/{self.precision}"

    # -- pieces --------------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Any]) -> np.ndarray:
        """All tiles of all images, in prompt order (transformers' pixel_values of one sample)."""
        return vlm_pixels(images, self.pre, self.image_splitting)

    def grids(self, images: Sequence[Any]) -> list[tuple[int, int]]:
        """Each image's (rows, cols) of tiles, from its size alone."""
        return [image_grid(load_image(im).size, self.pre, self.image_splitting) for im in images]

    def image_features(self, images: Sequence[Any]) -> np.ndarray:
        """(tiles, image tokens, hidden): the embeddings of the images' ``<image>`` placeholders."""
        px = self.pixel_values(images)
        feats = [
            self.sessions["vision"].run({"pixel_values": px[i : i + VISION_BATCH]})["image_features"]
            for i in range(0, len(px), VISION_BATCH)
        ]
        return feats[0] if len(feats) == 1 else np.concatenate(feats)

    def prompt_ids(self, messages: list[dict], grids: int | Sequence[tuple[int, int]]) -> list[int]:
        """The conversation's token ids; ``grids``: each image's (rows, cols) (see :meth:`grids`),
        or a count of unsplit images."""
        text = render_chat(self.template, messages, add_generation_prompt=True)
        return self.tokenizer.encode(
            expand_images(text, int(self.info["image_seq_len"]), grids), add_special_tokens=False
        ).ids

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        return np.array(self.sessions["embed"].run({"input_ids": np.asarray([list(ids)], np.int64)})["inputs_embeds"])

    def empty_cache(self) -> dict[str, np.ndarray]:
        return {n: np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}

    def open_decoder(self) -> Decoder:
        """A decoder holding one conversation's cache: the backend's fast path, or with
        ``kv_in_place = False`` the graph run as exported (cache in and out every step)."""
        session = self.sessions["decoder"]
        if self.kv_in_place:
            return session.open_decoder(self.cache_pairs)
        return RunDecoder(session, self.cache_pairs)

    def new_tokens(self, max_new_tokens: int | None) -> int:
        n = self.generation.get("default_new_tokens", 128) if max_new_tokens is None else max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        return n

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()

    def last_step_feeds(self, chat: Conversation) -> dict[str, np.ndarray]:
        """Decoder feeds of a step with the conversation's cache (fidelity checks)."""
        tok = chat.ids[-1]
        kv = {n: np.ascontiguousarray(chat.kv(n)[:, :, :-1]) for n in self.past_names}
        return {"inputs_embeds": self.embed([tok]), "position_ids": np.asarray([[len(chat.ids) - 1]], np.int64), **kv}

    # -- public API ------------------------------------------------------------------------
    def chat(self, max_tokens: int | None = None, system: str | None = None) -> Conversation:
        """A new conversation that keeps its KV cache between turns (at most ``max_tokens`` tokens)."""
        return Conversation(self, max_tokens, system)

    def generate(self, prompt: str, images: Sequence[Any] = (), max_new_tokens: int | None = None, **kw) -> str:
        """One turn in a fresh conversation."""
        return self.chat().send(prompt, images=images, max_new_tokens=max_new_tokens, **kw)
