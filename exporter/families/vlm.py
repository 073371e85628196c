"""vlm family: decoder-only vision-language chat models, SmolVLM and Idefics3 (one architecture:
a SigLIP-style vision tower, a pixel-shuffle connector, a LLaMA-style decoder), e.g.
HuggingFaceTB/SmolVLM-256M-Instruct.

Graphs (names are the bundle's contract with ``runtimes/pipelines/vlm.py``):

- ``vision``: ``pixel_values`` (N, 3, S, S) -> ``image_features`` (N, image tokens, hidden): the
  vision tower (every patch valid: one square image, no padding) and the connector, i.e. the
  embeddings that replace the ``<image>`` placeholders of the prompt.
- ``embed``: ``input_ids`` (B, T) -> ``inputs_embeds`` (B, T, hidden): the token embedding table.
- ``decoder``: ``inputs_embeds`` (B, T, hidden), ``position_ids`` (B, T), ``past.{i}.key|value``
  (B, kv heads, P, head_dim) -> ``logits`` of the last position (B, vocab) and
  ``present.{i}.*`` (B, kv heads, P + T, head_dim). One graph serves the prefill (T = the new
  turn's tokens) and every decode step (T = 1); the causal mask comes from the past length.

The vision graph takes square ``max_image_size`` tiles. A checkpoint whose processor splits
images (``do_image_splitting``, SmolVLM's default) keeps doing so in the runtime: rows x cols
tiles plus the whole image as one more, each with its ``<row_r_col_c>`` block in the prompt, as
the processor does. Parity checks here use one tile per image (the graphs see the same kind
of tile either way, and a split photo would be 13 tiles through PyTorch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import CheckpointError, ExportError, require
from ..checkpoint import Checkpoint
from ..graph import dedupe_initializers, export_dynamo, export_onnx
from ..prune import VlmPruner
from . import register
from .base import Family
from .decoders import flatten_cache

torch = require("torch", "export")

EXPORT_BATCH, EXPORT_SEQ, EXPORT_PAST = 2, 3, 4
PARITY_PROMPT = "Describe the image."
SPECIAL_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")


class VlmVision(torch.nn.Module):
    """The vision tower on full square images, then the connector. The tower's own embeddings
    bucketize fractional patch coordinates from a patch mask (variable-resolution inputs), which
    traces to an invalid graph; for a full image the position ids are a constant, computed here
    once by that very code (a full mask) and stored."""

    def __init__(self, model):
        super().__init__()
        inner = model.model
        self.vision, self.connector = inner.vision_model, inner.connector
        emb = self.vision.embeddings
        side = model.config.vision_config.image_size // emb.patch_size
        captured = {}

        def keep(module, args, out):  # returns None: the output stays as it is
            captured["ids"] = args[0]

        hook = emb.position_embedding.register_forward_hook(keep)
        with torch.no_grad():
            s = model.config.vision_config.image_size
            emb(torch.zeros(1, 3, s, s), torch.ones(1, side, side, dtype=torch.bool))
        hook.remove()
        self.register_buffer("position_ids", captured["ids"].clone(), persistent=False)

    def forward(self, pixel_values):
        emb = self.vision.embeddings
        h = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2) + emb.position_embedding(self.position_ids)
        h = self.vision.encoder(inputs_embeds=h).last_hidden_state
        return self.connector(self.vision.post_layernorm(h))


class VlmEmbed(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.table = model.model.text_model.get_input_embeddings()

    def forward(self, input_ids):
        return self.table(input_ids)


GROUPED = "mmdeploy_grouped"  # the decoder's attention as exported (see grouped_attention)


def grouped_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with the query heads grouped by the K/V head they share, instead of K and V
    repeated for every query head (transformers' repeat_kv): the graph then reads the cache once a
    step where repeat_kv's Expand wrote it out again per query head (3x for SmolVLM's 9 / 3 heads, at
    every step and every context length). Same math: head i uses K/V head i // (heads / kv heads)."""
    b, h, t, d = query.shape
    kv_heads = key.shape[1]
    rep = h // kv_heads
    q = query.reshape(b, kv_heads, rep * t, d)
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling  # (b, kv heads, rep * t, positions)
    if attention_mask is not None:
        s = scores.shape[-1]
        scores = (scores.view(b, kv_heads, rep, t, s) + attention_mask[:, :, None]).view(b, kv_heads, rep * t, s)
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value).view(b, h, t, d)
    return out.transpose(1, 2).contiguous(), None


def _use_grouped_attention(config) -> None:
    """The text model's attention -> grouped_attention, its mask the eager one (additive)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(GROUPED, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, eager_mask)
    config._attn_implementation = GROUPED


class VlmStep(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.text, self.lm_head = model.model.text_model, model.lm_head
        self.n_layers = model.config.text_config.num_hidden_layers
        _use_grouped_attention(self.text.config)

    def forward(self, inputs_embeds, position_ids, *kv):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache([(kv[i], kv[i + 1]) for i in range(0, 2 * self.n_layers, 2)])
        out = self.text(inputs_embeds=inputs_embeds, position_ids=position_ids, past_key_values=cache, use_cache=True)
        logits = self.lm_head(out.last_hidden_state[:, -1, :])
        return (logits, *flatten_cache(out.past_key_values, self.n_layers))


def _read_json(folder: Path | None, name: str) -> dict:
    if folder is None or not (folder / name).is_file():
        return {}
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / name} is not readable JSON: {exc}") from None


@register
class VlmFamily(Family):
    family = "vlm"
    architectures = {
        "SmolVLMForConditionalGeneration": ("SmolVLMForConditionalGeneration", "SmolVLMConfig"),
        "Idefics3ForConditionalGeneration": ("Idefics3ForConditionalGeneration", "Idefics3Config"),
    }
    model_types = ("smolvlm", "idefics3")
    default_classes = ("SmolVLMForConditionalGeneration", "SmolVLMConfig")
    capabilities = frozenset({Capability.CHAT, Capability.PRUNE})
    distiller = None
    pruner = VlmPruner  # --mlp on the vision tower, recovered by matching its image features
    components = ("vision", "embed", "decoder")
    outputs = {"vision": "image_features", "embed": "inputs_embeds", "decoder": "logits"}

    def __init__(self, ckpt: Checkpoint):
        from tokenizers import Tokenizer

        self.ckpt, self.model = ckpt, ckpt.model.eval()
        where = ckpt.source.get("path", ckpt.name)
        cfg = self.model.config
        tc, vc = cfg.text_config, cfg.vision_config
        self.n_layers, self.heads, self.kv_heads = tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads
        self.head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        self.hidden, self.vocab = tc.hidden_size, tc.vocab_size
        self.image_size, self.patch, self.vision_heads = vc.image_size, vc.patch_size, vc.num_attention_heads
        self.image_seq_len = int((vc.image_size // vc.patch_size) ** 2 / cfg.scale_factor**2)
        folder = ckpt.files_dir
        if folder is None or not (folder / "tokenizer.json").is_file():
            raise CheckpointError(
                f"{where} has no tokenizer.json: save the processor (AutoProcessor.save_pretrained) with it"
            )
        self.tokenizer_file = folder / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        missing = [t for t in SPECIAL_TOKENS if self.tokenizer.token_to_id(t) is None]
        if missing:
            raise CheckpointError(
                f"{where}: the tokenizer has no {', '.join(missing)} token: not a SmolVLM / Idefics3 tokenizer"
            )
        if self.tokenizer.token_to_id("<image>") != cfg.image_token_id:
            raise CheckpointError(
                f"{where}: config image_token_id {cfg.image_token_id} is not the tokenizer's <image> "
                f"({self.tokenizer.token_to_id('<image>')})"
            )
        from ..processor import raw_image_processor

        proc = _read_json(folder, "processor_config.json")
        # the settings as saved (the checkpoint's explicit form keeps only what the generic image
        # preprocessor applies, not max_image_size / do_image_splitting); a twin's: its registry row
        pre = raw_image_processor(folder) or dict((ckpt.registry_entry or {}).get("preprocessor") or {})
        if not pre:
            raise CheckpointError(
                f"{where} has no image processor config (processor_config.json or preprocessor_config.json)"
            )
        self.preprocess = self._preprocess_config(pre, where)
        self.chat_template = self._chat_template(folder, proc, where)
        self.image_seq_len = int(proc.get("image_seq_len", self.image_seq_len))
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else tc.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        eou = self.tokenizer.token_to_id("<end_of_utterance>")
        if eou not in eos:
            eos.append(eou)  # a chat turn ends on end-of-utterance
        pad = (
            gc.pad_token_id
            if gc.pad_token_id is not None
            else (tc.pad_token_id if tc.pad_token_id is not None else eos[0])
        )
        self.generation = {
            "eos_token_id": [int(e) for e in eos],
            "pad_token_id": int(pad),
            "start_ids": [],
            "max_positions": int(tc.max_position_embeddings),
            "default_new_tokens": 128,
            "num_beams": 1,
            "length_penalty": 1.0,
            "early_stopping": False,
        }

    def _preprocess_config(self, pre: dict[str, Any], where: str) -> dict[str, Any]:
        tile = (pre.get("max_image_size") or {}).get("longest_edge", self.image_size)
        if tile != self.image_size:
            raise CheckpointError(
                f"{where}: max_image_size {tile} differs from the vision tower's image_size {self.image_size}"
            )
        return {
            "longest_edge": int((pre.get("size") or {}).get("longest_edge", 4 * tile)),
            "tile": int(tile),
            "resample": int(pre.get("resample", 1)),  # LANCZOS
            "rescale_factor": float(pre.get("rescale_factor", 1 / 255)),
            "image_mean": [float(x) for x in pre.get("image_mean", [0.5, 0.5, 0.5])],
            "image_std": [float(x) for x in pre.get("image_std", [0.5, 0.5, 0.5])],
            "do_image_splitting": self._splitting(pre, tile, where),
        }

    def _splitting(self, pre: dict[str, Any], tile: int, where: str) -> bool:
        """The processor's do_image_splitting, once the tokenizer is known to have the tile tags."""
        if not pre.get("do_image_splitting", True):
            return False
        most = -(-int((pre.get("size") or {}).get("longest_edge", 4 * tile)) // tile)
        missing = [
            f"<row_{r}_col_{c}>"
            for r in range(1, most + 1)
            for c in range(1, most + 1)
            if self.tokenizer.token_to_id(f"<row_{r}_col_{c}>") is None
        ]
        if missing:
            raise CheckpointError(
                f"{where}: the processor splits images into up to {most} x {most} tiles but the tokenizer "
                f"has no {missing[0]} token ({len(missing)} tile tags missing); set do_image_splitting "
                "to false in its processor config to export one tile per image"
            )
        return True

    @staticmethod
    def _chat_template(folder: Path, proc: dict, where: str) -> str:
        for name in ("chat_template.jinja",):
            if (folder / name).is_file():
                return (folder / name).read_text()
        for src in (proc, _read_json(folder, "chat_template.json"), _read_json(folder, "tokenizer_config.json")):
            t = src.get("chat_template")
            if isinstance(t, str) and t:
                return t
        raise CheckpointError(
            f"{where} has no chat template (chat_template.jinja, or chat_template in processor / tokenizer config)"
        )

    # -- the export loop's interface ---------------------------------------------------
    def kv_names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    def input_names(self, component: str) -> list[str]:
        return {
            "vision": ["pixel_values"],
            "embed": ["input_ids"],
            "decoder": ["inputs_embeds", "position_ids"] + self.kv_names("past"),
        }[component]

    def output_names(self, component: str) -> list[str]:
        return {
            "vision": ["image_features"],
            "embed": ["inputs_embeds"],
            "decoder": ["logits"] + self.kv_names("present"),
        }[component]

    def module(self, component: str):
        return {"vision": VlmVision, "embed": VlmEmbed, "decoder": VlmStep}[component](self.model).eval()

    def specs(self, component: str) -> dict[str, list[dict[str, Any]]]:
        f = lambda n, shape, dt="float32": {"name": n, "dtype": dt, "shape": shape}  # noqa: E731
        kv = lambda n, seq: f(n, ["batch", self.kv_heads, seq, self.head_dim])  # noqa: E731
        if component == "vision":
            s = self.image_size
            return {
                "inputs": [f("pixel_values", ["images", 3, s, s])],
                "outputs": [f("image_features", ["images", self.image_seq_len, self.hidden])],
            }
        if component == "embed":
            return {
                "inputs": [f("input_ids", ["batch", "sequence"], "int64")],
                "outputs": [f("inputs_embeds", ["batch", "sequence", self.hidden])],
            }
        return {
            "inputs": [
                f("inputs_embeds", ["batch", "sequence", self.hidden]),
                f("position_ids", ["batch", "sequence"], "int64"),
            ]
            + [kv(n, "past") for n in self.kv_names("past")],
            "outputs": [f("logits", ["batch", self.vocab])]
            + [kv(n, "past + sequence") for n in self.kv_names("present")],
        }

    def export_component(self, component: str, module, path: Path, log: Callable[[str], None] = lambda s: None) -> None:
        if component == "vision":
            export_onnx(
                module,
                self.feeds("vision", 2),
                ["pixel_values"],
                ["image_features"],
                {"pixel_values": {0: "images"}, "image_features": {0: "images"}},
                path,
            )
            return
        if component == "embed":
            export_onnx(
                module,
                self.feeds("embed", 2),
                ["input_ids"],
                ["inputs_embeds"],
                {"input_ids": {0: "batch", 1: "sequence"}, "inputs_embeds": {0: "batch", 1: "sequence"}},
                path,
            )
            return
        Dim = torch.export.Dim
        b, s, p = Dim("batch", min=1, max=4096), Dim("sequence", min=1, max=8192), Dim("past", min=0, max=16384)
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(EXPORT_BATCH, EXPORT_SEQ, self.hidden, generator=g)
        pos = (torch.arange(EXPORT_SEQ) + EXPORT_PAST).unsqueeze(0).repeat(EXPORT_BATCH, 1)
        kv = [
            torch.randn(EXPORT_BATCH, self.kv_heads, EXPORT_PAST, self.head_dim, generator=g)
            for _ in range(2 * self.n_layers)
        ]
        spec = ({0: b, 1: s}, {0: b, 1: s}, tuple({0: b, 2: p} for _ in kv))
        t = time.perf_counter()
        export_dynamo(module, (emb, pos, *kv), self.input_names("decoder"), self.output_names("decoder"), spec, path)
        d = dedupe_initializers(path)
        onnx = require("onnx", "export")
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported {path.name} fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
        log(f"decoder: dynamo export {time.perf_counter() - t:.1f}s ({d['merged']} identical weights merged)")

    # -- real inputs ----------------------------------------------------------------------
    def pixel_values(self, images) -> np.ndarray:
        from ...runtimes.pipelines.vlm import vlm_pixels

        return vlm_pixels(images, self.preprocess)

    def prompt_ids(self, messages: list[dict], n_images: int) -> list[int]:
        from ...runtimes.pipelines.vlm import expand_images, render_chat

        text = render_chat(self.chat_template, messages, add_generation_prompt=True)
        return self.tokenizer.encode(expand_images(text, self.image_seq_len, n_images), add_special_tokens=False).ids

    def feeds(self, component: str, batch: int, data=None) -> dict[str, np.ndarray]:
        from ...common.datasets.photos import photo_batch

        if component == "vision":
            return {
                "pixel_values": self.pixel_values(data.image_batch(batch) if data is not None else photo_batch(batch))
            }
        if component == "embed":
            ids = self.prompt_ids([{"role": "user", "content": PARITY_PROMPT}], 0)
            return {"input_ids": np.tile(np.asarray(ids, np.int64), (batch, 1))}
        return self.parity_cases("decoder", batch)[0][1]

    def _torch(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..reference import TorchSession

        return TorchSession(self.module(component), self.input_names(component), self.output_names(component)).run(
            feeds
        )

    def prefill_feeds(self, images, prompt: str = PARITY_PROMPT) -> dict[str, np.ndarray]:
        """The decoder's first feeds for a one-image user turn (PyTorch's own embeddings)."""
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        ids = np.asarray(self.prompt_ids(msgs, 1), np.int64)[None]
        emb = self._torch("embed", {"input_ids": ids})["inputs_embeds"]
        feats = self._torch("vision", {"pixel_values": self.pixel_values(images)})["image_features"]
        emb[0, ids[0] == self.model.config.image_token_id] = feats.reshape(-1, self.hidden)
        past = {n: np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for n in self.kv_names("past")}
        return {"inputs_embeds": emb, "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None], **past}

    def parity_cases(self, component: str, batch: int = 2) -> list[tuple[str, dict[str, np.ndarray]]]:
        from ...common.datasets.photos import photo_batch

        if component != "decoder":
            return [
                (f"{batch} real photos" if component == "vision" else "a chat prompt", self.feeds(component, batch))
            ]
        first = self.prefill_feeds(photo_batch(1))
        out = self._torch("decoder", first)
        nxt = self._torch("embed", {"input_ids": out["logits"].argmax(-1)[:, None].astype(np.int64)})["inputs_embeds"]
        n = first["position_ids"].shape[1]
        step = {
            "inputs_embeds": nxt,
            "position_ids": np.asarray([[n]], np.int64),
            **{p: out[q] for p, q in zip(self.kv_names("past"), self.kv_names("present"))},
        }
        return [(f"prefill of a one-photo turn ({n} tokens)", first), (f"step 1 (past {n})", step)]

    def manifest_extra(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {
            "preprocess": {"file": "preprocessor_config.json", "kind": "vlm", "config": self.preprocess},
            "tokenizer": {"file": "tokenizer.json", "max_length": int(self.generation["max_positions"])},
            "chat": {
                "template_file": "chat_template.jinja",
                "image_seq_len": self.image_seq_len,
                "image_token_id": int(self.model.config.image_token_id),
                "special_tokens": {t: int(tok.token_to_id(t)) for t in SPECIAL_TOKENS},
                "num_layers": self.n_layers,
                "num_heads": self.heads,
                "num_kv_heads": self.kv_heads,
                "head_dim": self.head_dim,
                "hidden_size": self.hidden,
                "vocab_size": self.vocab,
                # ONNX Runtime's vision graphs run each attention as one MultiHeadAttention
                "vision_attention": {"num_heads": self.vision_heads, "fused": ["onnxruntime"]},
                # OpenVINO runs the decoder stateful (its cache in the infer request, made at load), its
                # attention fused into ScaledDotProductAttention at load so the CPU plugin appends to the
                # cache in place; ONNX Runtime's decoders are written with GroupQueryAttention over one
                # shared cache buffer (exporter/ort_attention.py); bundles without a record pass the
                # cache in and out of every step
                "kv_cache": {
                    "stateful": ["openvino"],
                    "fused_attention": ["openvino"],
                    "shared_buffer": ["onnxruntime"],
                    "precision": "fp32",
                },
            },
            "generation": self.generation,
        }

    def bundle_files(self) -> list[tuple[Path, str]]:
        return [(self.tokenizer_file, "tokenizer.json")]

    def write_files(self, w) -> None:
        w.stage("chat_template.jinja").write_text(self.chat_template)
        w.register("chat_template.jinja")

    def torch_generate(self, messages: list[dict], images: list, max_new_tokens: int = 8) -> np.ndarray:
        """transformers' generate on the rendered conversation: the new token ids."""
        ids = torch.tensor([self.prompt_ids(messages, len(images))])
        kw = {}
        if images:
            kw["pixel_values"] = torch.from_numpy(self.pixel_values(images))[None]
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=self.generation["eos_token_id"],
                pad_token_id=self.generation["pad_token_id"],
                **kw,
            )
        return out[0, ids.shape[1] :].numpy()
