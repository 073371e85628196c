"""Train the small fixture models the tests and the quickstart use (dev script).

    python -m mmdeploy.exporter.train_fixtures clip-shapes --out fixtures/clip-shapes \
        [--seed 0] [--threads 2]

``clip-shapes``: a tiny ``transformers.CLIPModel`` with its own byte-level BPE
tokenizer (CLIP-style, saved as ``tokenizer.json``) and a ``CLIPImageProcessor``
config, trained on CPU with a contrastive loss on the procedural coloured-shapes
data set (:mod:`mmdeploy.common.datasets.shapes`).  The folder is an ordinary
HF checkpoint folder: ``CLIPModel.from_pretrained`` / ``CLIPProcessor.from_pretrained``
load it like any real checkpoint.

Needs the [export] extra (torch, transformers, tokenizers, safetensors).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mmdeploy.common.datasets import shapes

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# same split regex as OpenAI CLIP / transformers' CLIPTokenizer
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

# clip-shapes recipe (the card is written from these)
CLIP_SHAPES = dict(
    family="clip",
    image_size=64,
    # patch 16 (4x4 grid): with patch 8 the tiny ViT sat on a long plateau at chance
    # level for the shape (colour was learned at once); fewer, larger patches carry
    # more of the shape each and train several times faster per wall-clock second
    patch_size=16,
    vision_hidden=128,
    vision_layers=4,
    vision_heads=4,
    text_hidden=64,
    text_layers=2,
    text_heads=2,
    max_position_embeddings=16,
    projection_dim=64,
    train_images=24000,
    batch_size=64,
    steps=5000,
    large_only_steps=300,
    lr=1.5e-3,
    weight_decay=0.05,
    warmup=100,
    prompt_loss_weight=1.0,
    eval_images=500,
)

# siglip-shapes: the same towers and data as clip-shapes, SigLIP's way (SiglipModel: no CLS,
# attention-pool head, last-token text pooling over text padded to max_length, no mask) and
# SigLIP's pairwise sigmoid loss with the learned bias
SIGLIP_SHAPES = dict(CLIP_SHAPES, family="siglip", steps=7000)
# align-shapes: ALIGN's way (AlignModel: EfficientNet image tower with BatchNorm and no image
# projection, BERT text tower, softmax over cosine / temperature); the transformers 5 layout
# (processor_config.json with the image processor nested, no preprocessor_config.json)
ALIGN_SHAPES = dict(
    CLIP_SHAPES,
    family="align",
    text_hidden=64,
    text_layers=2,
    text_heads=2,
    max_position_embeddings=16,
    projection_dim=64,
    steps=3000,
    lr=2e-3,
)
RECIPES = {"clip-shapes": CLIP_SHAPES, "siglip-shapes": SIGLIP_SHAPES, "align-shapes": ALIGN_SHAPES}


# --------------------------------------------------------------------------- tokenizer


def _clip_pipeline(tok):
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def shapes_corpus() -> list[str]:
    """Every caption the generator can produce plus every class prompt."""
    texts = [
        shapes.caption_of(c, s, z, b)
        for c in shapes.COLORS
        for s in shapes.SHAPES
        for z in shapes.SIZES
        for b in shapes.BACKGROUNDS
        if b != c
    ]
    texts += [shapes.prompt(label) for label in shapes.labels()]
    texts += [f"a photo of a {w}" for w in shapes.COLORS + shapes.SHAPES + shapes.BACKGROUNDS]
    return texts


def build_clip_tokenizer(corpus: list[str]):
    """CLIP-style byte-level BPE trained on ``corpus``.

    Vocabulary layout mirrors OpenAI CLIP: the 256 byte symbols, the 256 byte symbols
    with the end-of-word suffix ``</w>`` (so any text encodes without ``unk``), then one
    token per learned merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last (eos has
    the largest id, so argmax-pooling and first-eos pooling agree).
    Returns ``(transformers.CLIPTokenizerFast, vocab, merges)``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizerFast

    tok = _clip_pipeline(Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>")))
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]

    # byte symbols in byte order, like CLIP's bytes_to_unicode()
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_syms = [chr(c) for _, c in sorted(zip(bs, cs))]
    vocab_list = byte_syms + [s + "</w>" for s in byte_syms]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab_list.append(a + b)
    vocab_list += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    merges_str = [f"{a} {b}" for a, b in merges]
    hf_tok = CLIPTokenizerFast(
        vocab=vocab, merges=[tuple(m) for m in merges], model_max_length=CLIP_SHAPES["max_position_embeddings"]
    )
    return hf_tok, vocab, merges_str


def save_tokenizer(hf_tok, out: Path) -> None:
    hf_tok.save_pretrained(out)
    # transformers v5 no longer writes these; older loaders (and people) look for them
    for name in ("vocab.json", "merges.txt"):
        p = out / name
        if p.exists():
            p.unlink()
    stm = out / "special_tokens_map.json"
    if not stm.exists():
        stm.write_text(
            json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2) + "\n"
        )
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("tokenizer_class", "CLIPTokenizer")
    cfg.update(
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        do_lower_case=True,
        model_max_length=CLIP_SHAPES["max_position_embeddings"],
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def check_tokenizer(out: Path, texts: list[str]) -> None:
    """CLIPTokenizerFast.from_pretrained and plain tokenizers.Tokenizer agree (bos/eos added)."""
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizerFast

    hf = CLIPTokenizerFast.from_pretrained(out)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos, eos = hf.convert_tokens_to_ids(BOS), hf.convert_tokens_to_ids(EOS)
    for t in texts + ["A Photo of a RED   Circle!", "zebra-7 on plaid"]:
        a = hf(t)["input_ids"]
        b = raw.encode(t).ids
        if a != b or a[0] != bos or a[-1] != eos or eos in a[1:-1]:
            raise RuntimeError(f"tokenizer mismatch for {t!r}: HF {a} vs tokenizers {b}")


def unigram_tokenizer(corpus: list[str]):
    """SigLIP-style: a SentencePiece-like Unigram (lower-cased, punctuation stripped, ``</s>``
    appended and used as pad, as SiglipTokenizer does). Pieces are every corpus word (scored by
    log frequency) plus single characters as a low-scored fallback, so any text encodes; the
    Unigram trainer of ``tokenizers`` prunes a corpus this small down to characters.
    Returns a ``tokenizers.Tokenizer``."""
    import re
    import string
    from collections import Counter

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    punct = "[" + "".join("\\" + c for c in string.punctuation) + "]"
    words = Counter(w for t in corpus for w in re.sub(punct, "", t.lower()).split())
    total = sum(words.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, math.log(n / total)) for w, n in sorted(words.items())]
    chars = sorted({c for w in words for c in w} | set(string.ascii_lowercase + string.digits))
    pieces += [("\u2581", -20.0)] + [(c, -25.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Lowercase(),
            normalizers.Replace(Regex(punct), ""),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


def wordpiece_tokenizer(corpus: list[str]):
    """BERT-style (ALIGN's text tower): WordPiece, lower-cased, ``[CLS] ... [SEP]``, ``[PAD]`` = 0.
    The vocabulary is built, not trained (the WordPiece trainer of ``tokenizers`` breaks ties
    differently from run to run): specials, every corpus word, then the characters and their
    ``##`` continuations as the fallback; sorted, so the same corpus gives the same ids."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in corpus for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    chars = sorted({c for w in words for c in w} | set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab += [c for c in chars if c not in vocab] + ["##" + c for c in chars]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


# --------------------------------------------------------------------------- model


def build_clip_model(vocab_size: int, bos_id: int, eos_id: int, r=CLIP_SHAPES):
    from transformers import CLIPConfig, CLIPModel

    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=r["text_hidden"],
        intermediate_size=4 * r["text_hidden"],
        num_hidden_layers=r["text_layers"],
        num_attention_heads=r["text_heads"],
        max_position_embeddings=r["max_position_embeddings"],
        projection_dim=r["projection_dim"],
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    vision_config = dict(
        hidden_size=r["vision_hidden"],
        intermediate_size=4 * r["vision_hidden"],
        num_hidden_layers=r["vision_layers"],
        num_attention_heads=r["vision_heads"],
        image_size=r["image_size"],
        patch_size=r["patch_size"],
        projection_dim=r["projection_dim"],
        hidden_act="quick_gelu",
    )
    cfg = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=r["projection_dim"])
    model = CLIPModel(cfg)
    _init_sincos_2d(model, r)
    return model


def _init_sincos_2d(model, r) -> None:
    init_sincos_2d(model.vision_model.embeddings.position_embedding.weight, r["image_size"] // r["patch_size"])


def init_sincos_2d(emb, g: int, cls: bool = True) -> None:
    """Start ViT position embeddings ((1 +) g*g + CLS rows of D) from a 2-D sin-cos table (MAE
    style): with random ones a tiny ViT learns colours fast but shapes slowly. Row 0 (CLS) is 0;
    ``cls=False`` for towers without a CLS token (SigLIP: g*g rows)."""
    import torch

    rows = emb.reshape(-1, emb.shape[-1])  # (1 + g*g, D) view of (1 + g*g, D) or (1, 1 + g*g, D)
    d = rows.shape[1]
    q = d // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float32) / q))
    ys, xs = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32), indexing="ij")
    oy, ox = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    table = torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], dim=1)  # (g*g, 4q)
    with torch.no_grad():
        rows.zero_()
        rows[int(cls) :, : 4 * q] = table * 0.5


def image_processor_config(image_size: int) -> dict:
    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD,
        "processor_class": "CLIPProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def build_siglip_model(vocab_size: int, eos_id: int, r=SIGLIP_SHAPES):
    import math as _m

    import torch
    from transformers import SiglipConfig, SiglipModel

    tower = lambda w, n, h: dict(hidden_size=w, intermediate_size=4 * w, num_hidden_layers=n, num_attention_heads=h)  # noqa: E731
    cfg = SiglipConfig(
        # SigLIP has no projection: the text head maps onto the vision width
        text_config=dict(
            vocab_size=vocab_size,
            max_position_embeddings=r["max_position_embeddings"],
            pad_token_id=eos_id,
            eos_token_id=eos_id,
            bos_token_id=None,
            projection_size=r["vision_hidden"],
            **tower(r["text_hidden"], r["text_layers"], r["text_heads"]),
        ),
        vision_config=dict(
            image_size=r["image_size"],
            patch_size=r["patch_size"],
            **tower(r["vision_hidden"], r["vision_layers"], r["vision_heads"]),
        ),
    )
    model = SiglipModel(cfg)
    init_sincos_2d(
        model.vision_model.embeddings.position_embedding.weight, r["image_size"] // r["patch_size"], cls=False
    )
    with torch.no_grad():  # the paper's start: t' = log 10, b = -10
        model.logit_scale.fill_(_m.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


# EfficientNet stages for 64x64 inputs (stem /2, then /1 /2 /2 /2: 4x4 at the end); the last
# stage's width is the image embedding (ALIGN has no image projection) = projection_dim
ALIGN_VISION = dict(
    width_coefficient=1.0,
    depth_coefficient=1.0,
    kernel_sizes=[3, 3, 5, 3],
    in_channels=[32, 16, 24, 40],
    out_channels=[16, 24, 40, 64],
    strides=[1, 2, 2, 2],
    num_block_repeats=[1, 2, 2, 2],
    expand_ratios=[1, 6, 6, 6],
    depthwise_padding=[],
    hidden_dim=64,
)


def build_align_model(vocab_size: int, pad_id: int, r=ALIGN_SHAPES):
    from transformers import AlignConfig, AlignModel

    cfg = AlignConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=r["text_hidden"],
            intermediate_size=4 * r["text_hidden"],
            num_hidden_layers=r["text_layers"],
            num_attention_heads=r["text_heads"],
            max_position_embeddings=r["max_position_embeddings"],
            pad_token_id=pad_id,
        ),
        vision_config=dict(image_size=r["image_size"], **ALIGN_VISION),
        projection_dim=r["projection_dim"],
        temperature_init_value=0.07,
    )
    return AlignModel(cfg)


def siglip_image_processor_config(image_size: int) -> dict:
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }


def align_image_processor_kwargs(image_size: int) -> dict:
    # kakaobrain/align-base's settings at this size: resize, center crop, x / 127.5 - 1 (rescale offset)
    return dict(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=2,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 127.5,
        rescale_offset=True,
        do_normalize=False,
        include_top=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


# --------------------------------------------------------------------------- per-family pieces


class ClipFixture:
    """What differs between the fixture families; CLIP's way is the default."""

    mean_std = (CLIP_MEAN, CLIP_STD)  # the image normalisation its processor applies
    text_mask = True  # the text tower takes an attention_mask
    sigmoid_loss = False  # SigLIP's pairwise sigmoid loss instead of the softmax contrastive one

    def tokenizer(self, out: Path, corpus: list[str], r: dict):
        """Build and save the tokenizer; returns (tokenizer, encode kwargs, ids for the card)."""
        hf_tok, vocab, merges = build_clip_tokenizer(corpus)
        save_tokenizer(hf_tok, out)
        check_tokenizer(out, corpus)
        ids = dict(vocab_size=len(vocab), bos_id=vocab[BOS], eos_id=vocab[EOS], n_merges=len(merges))
        print(
            f"[tokenizer] vocab {len(vocab)}, merges {len(merges)}, bos {ids['bos_id']}, eos/pad {ids['eos_id']}",
            flush=True,
        )
        return hf_tok, dict(padding=True), ids

    def model(self, ids: dict, r: dict):
        return build_clip_model(ids["vocab_size"], ids["bos_id"], ids["eos_id"], r)

    def save_processor(self, out: Path, hf_tok, r: dict) -> None:
        (out / "preprocessor_config.json").write_text(
            json.dumps(image_processor_config(r["image_size"]), indent=2) + "\n"
        )
        # CLIPProcessor.from_pretrained(folder) must work too
        (out / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}, indent=2) + "\n")

    def scale_bias(self, model):
        """(scale, bias) of the similarity logits: scale * cos + bias."""
        return model.logit_scale.exp(), 0.0

    def clamp(self, model) -> None:
        model.logit_scale.clamp_(0, math.log(100))

    def eval_encoding(self, tok) -> dict:
        return dict(padding=True)

    def text_kwargs(self, enc) -> dict:
        if not self.text_mask:
            return {"input_ids": enc["input_ids"]}
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class SiglipFixture(ClipFixture):
    mean_std = ([0.5] * 3, [0.5] * 3)
    text_mask = False  # it pools the last position of text padded to max_length
    sigmoid_loss = True

    def tokenizer(self, out, corpus, r):
        from transformers import PreTrainedTokenizerFast

        n = r["max_position_embeddings"]
        raw = unigram_tokenizer(corpus)
        hf_tok = PreTrainedTokenizerFast(
            tokenizer_object=raw, eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=n
        )
        hf_tok.save_pretrained(out)
        ids = dict(vocab_size=raw.get_vocab_size(), eos_id=raw.token_to_id("</s>"))
        print(f"[tokenizer] siglip: vocab {ids['vocab_size']}", flush=True)
        return hf_tok, dict(padding="max_length", max_length=n, truncation=True, return_attention_mask=False), ids

    def model(self, ids, r):
        return build_siglip_model(ids["vocab_size"], ids["eos_id"], r)

    def save_processor(self, out, hf_tok, r):
        (out / "preprocessor_config.json").write_text(
            json.dumps(siglip_image_processor_config(r["image_size"]), indent=2) + "\n"
        )

    def scale_bias(self, model):
        return model.logit_scale.exp(), model.logit_bias

    def eval_encoding(self, tok) -> dict:
        return dict(padding="max_length", max_length=tok.model_max_length)


class AlignFixture(ClipFixture):
    mean_std = ([0.5] * 3, [0.5] * 3)  # x / 127.5 - 1 = (x/255 - 0.5) / 0.5

    def tokenizer(self, out, corpus, r):  # saved with the image processor by AlignProcessor
        from transformers import PreTrainedTokenizerFast

        raw = wordpiece_tokenizer(corpus)
        hf_tok = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=r["max_position_embeddings"],
        )
        ids = dict(vocab_size=raw.get_vocab_size(), pad_id=raw.token_to_id("[PAD]"))
        print(f"[tokenizer] align: vocab {ids['vocab_size']}", flush=True)
        return hf_tok, dict(padding=True, return_token_type_ids=False), ids

    def model(self, ids, r):
        return build_align_model(ids["vocab_size"], ids["pad_id"], r)

    def save_processor(self, out, hf_tok, r):  # as transformers 5 saves it: processor_config.json, nested
        from transformers import AlignProcessor, EfficientNetImageProcessor

        AlignProcessor(
            image_processor=EfficientNetImageProcessor(**align_image_processor_kwargs(r["image_size"])),
            tokenizer=hf_tok,
        ).save_pretrained(out)

    def scale_bias(self, model):
        return 1.0 / model.temperature, 0.0

    def clamp(self, model) -> None:
        model.temperature.clamp_(min=0.01)


# keyed by the recipes' "family" and by the checkpoints' model_type (the same names)
FIXTURE_FAMILIES = {"clip": ClipFixture(), "siglip": SiglipFixture(), "align": AlignFixture()}


# --------------------------------------------------------------------------- eval


def zero_shot_top1(folder: Path, n: int = 500, split: str = "test", batch: int = 250) -> float:
    """Zero-shot top-1 over all colour x shape labels, with the plain HF Auto classes."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    fam = FIXTURE_FAMILIES[model.config.model_type]
    tok = AutoTokenizer.from_pretrained(folder)
    proc = AutoImageProcessor.from_pretrained(folder)
    size = getattr(proc, "crop_size", None) or proc.size
    labels = shapes.labels()
    samples = shapes.generate(split, n, image_size=size["height"])
    with torch.no_grad():
        t = tok([shapes.prompt(lb) for lb in labels], return_tensors="pt", **fam.eval_encoding(tok))
        te = model.get_text_features(**fam.text_kwargs(t))
        te = getattr(te, "pooler_output", te)
        te = te / te.norm(dim=-1, keepdim=True)
        correct = 0
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            px = proc(images=[s.image for s in chunk], return_tensors="pt")["pixel_values"]
            ie = model.get_image_features(pixel_values=px)
            ie = getattr(ie, "pooler_output", ie)
            ie = ie / ie.norm(dim=-1, keepdim=True)
            pred = (ie @ te.T).argmax(-1).tolist()
            correct += sum(labels[p] == shapes.label_of(s) for p, s in zip(pred, chunk))
    return correct / len(samples)


# --------------------------------------------------------------------------- training


def _to_pixels(samples) -> np.ndarray:
    return np.stack([np.asarray(s.image, dtype=np.uint8).transpose(2, 0, 1) for s in samples])


def sigmoid_pair_loss(logits, target):
    """SigLIP's loss: each (image, text) pair is its own binary problem, summed, over the batch."""
    import torch.nn.functional as F

    return -F.logsigmoid((2 * target - 1) * logits).sum() / logits.shape[0]


def train_shapes_fixture(out: Path, seed: int = 0, threads: int = 2, r=CLIP_SHAPES) -> dict:
    import torch
    import torch.nn.functional as F

    family = r["family"]
    fam = FIXTURE_FAMILIES[family]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    corpus = shapes_corpus()
    hf_tok, enc_kw, ids = fam.tokenizer(out, corpus, r)

    # data
    train = shapes.generate("train", r["train_images"], image_size=r["image_size"])
    pix = torch.from_numpy(_to_pixels(train))  # N,3,H,W uint8
    mean_, std_ = fam.mean_std
    mean = torch.tensor(mean_).view(1, 3, 1, 1)
    std = torch.tensor(std_).view(1, 3, 1, 1)
    captions = sorted({s.caption for s in train} | set(corpus))
    cap_index = {c: i for i, c in enumerate(captions)}
    cap_of = torch.tensor([cap_index[s.caption] for s in train])
    labels = shapes.labels()
    lab_of = torch.tensor([labels.index(shapes.label_of(s)) for s in train])
    enc = hf_tok(captions, return_tensors="pt", **enc_kw)
    cap_ids = enc["input_ids"]
    cap_mask = enc.get("attention_mask")
    penc = fam.text_kwargs(hf_tok([shapes.prompt(lb) for lb in labels], return_tensors="pt", **enc_kw))
    print(f"[data] {len(train)} train images, {len(captions)} distinct texts, {time.time() - t0:.1f}s", flush=True)

    model = fam.model(ids, r)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {family}: {n_params / 1e6:.2f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": r["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=r["lr"],
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    steps, warm = r["steps"], r["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )

    def feats(out_):
        return getattr(out_, "pooler_output", out_)

    def text_feats(sel):
        return feats(
            model.get_text_features(
                **fam.text_kwargs(
                    {"input_ids": cap_ids[sel], "attention_mask": None if cap_mask is None else cap_mask[sel]}
                )
            )
        )

    val = shapes.generate("val", 300, image_size=r["image_size"])
    vx = (torch.from_numpy(_to_pixels(val)).float() / 255.0 - mean) / std
    vy = torch.tensor([labels.index(shapes.label_of(s)) for s in val])

    def val_acc() -> float:
        model.eval()
        with torch.no_grad():
            ie = F.normalize(feats(model.get_image_features(pixel_values=vx)), dim=-1)
            pe = F.normalize(feats(model.get_text_features(**penc)), dim=-1)
            a = ((ie @ pe.T).argmax(-1) == vy).float().mean().item()
        model.train()
        return a

    model.train()
    bs = r["batch_size"]
    # curriculum: the first steps see large shapes only (more patches carry the shape,
    # the ViT leaves its initial plateau much sooner), then everything
    large = np.array([i for i, s in enumerate(train) if s.size == "large"])
    order = rng.permutation(len(train))
    pos = 0
    t_train = time.time()
    t_window, best_step_s = t_train, float("inf")  # fastest 50-step window: idle-machine speed
    for step in range(steps):
        if pos + bs > len(order):
            order, pos = rng.permutation(len(train)), 0
        if step < r["large_only_steps"]:
            idx = torch.from_numpy(rng.choice(large, bs, replace=False))
        else:
            idx = torch.from_numpy(order[pos : pos + bs])
            pos += bs
        x = (pix[idx].float() / 255.0 - mean) / std
        ci = cap_of[idx]
        uniq, inv = torch.unique(ci, return_inverse=True)  # encode each distinct caption once
        ie = F.normalize(feats(model.get_image_features(pixel_values=x)), dim=-1)
        te = F.normalize(text_feats(uniq), dim=-1)
        pe = F.normalize(feats(model.get_text_features(**penc)), dim=-1)
        scale, bias = fam.scale_bias(model)
        # image <-> caption, multi-positive: image i matches every in-batch caption that
        # describes it (identical caption = identical fields)
        logits = scale * ie @ te.T + bias  # B x U
        target = F.one_hot(inv, len(uniq)).float()
        y = lab_of[idx]
        plogits = scale * ie @ pe.T + bias  # image vs all class prompts: the zero-shot objective
        if fam.sigmoid_loss:
            loss_cap = sigmoid_pair_loss(logits, target)
            loss_p = sigmoid_pair_loss(plogits, F.one_hot(y, len(labels)).float())
            loss = loss_cap + r["prompt_loss_weight"] * loss_p
        else:
            loss_i2t = -(target * logits.log_softmax(-1)).sum(-1).mean()
            t_logits = logits.T  # U x B
            t_target = target.T / target.T.sum(-1, keepdim=True)
            loss_t2i = -(t_target * t_logits.log_softmax(-1)).sum(-1).mean()
            loss_cap = 0.5 * (loss_i2t + loss_t2i)
            loss_p = F.cross_entropy(plogits, y)
            # prompt -> image, multi-positive over in-batch images of that class
            pt = F.one_hot(y, len(labels)).float().T  # C x B
            has = pt.sum(-1) > 0
            loss_p2i = -((pt[has] / pt[has].sum(-1, keepdim=True)) * plogits.T[has].log_softmax(-1)).sum(-1).mean()
            loss = loss_cap + r["prompt_loss_weight"] * 0.5 * (loss_p + loss_p2i)

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            fam.clamp(model)
        if step % 50 == 49:
            now = time.time()
            best_step_s, t_window = min(best_step_s, (now - t_window) / 50), now
        if step % 50 == 0 or step == steps - 1:
            acc = (plogits.argmax(-1) == y).float().mean().item()
            el = time.time() - t_train
            print(
                f"[train] step {step:5d}/{steps} loss {loss.item():.3f} (cap {loss_cap.item():.3f} "
                f"prompt {loss_p.item():.3f}) batch-acc {acc:.3f} scale {float(scale.detach()):.1f} "
                f"lr {sched.get_last_lr()[0]:.2e} {el:.0f}s (eta {el / (step + 1) * (steps - step - 1):.0f}s)",
                flush=True,
            )
        if (step + 1) % 250 == 0 and step + 1 < steps:
            print(f"[val] step {step + 1}: zero-shot top-1 on 300 val images {val_acc():.3f}", flush=True)
    train_s = time.time() - t_train

    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    fam.save_processor(out, hf_tok, r)
    # drop anything save_pretrained may add that the card doesn't describe
    (out / "generation_config.json").unlink(missing_ok=True)

    acc = zero_shot_top1(out, n=r["eval_images"])
    total_s = time.time() - t0
    print(f"[eval] zero-shot top-1 on test ({r['eval_images']} images, {len(labels)} classes): {acc:.4f}", flush=True)
    info = dict(
        accuracy=acc,
        train_s=train_s,
        total_s=total_s,
        idle_train_s=best_step_s * steps,
        n_params=n_params,
        seed=seed,
        threads=threads,
        **ids,
    )
    write_card(out, info, r)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"[done] {out} ({size / 1e6:.2f} MB) in {total_s:.0f}s", flush=True)
    return info


def _vit_rows(r: dict) -> str:
    return (
        f"| hidden / MLP | {r['vision_hidden']} / {4 * r['vision_hidden']} | {r['text_hidden']} / {4 * r['text_hidden']} |\n"
        f"| layers / heads | {r['vision_layers']} / {r['vision_heads']} | {r['text_layers']} / {r['text_heads']} |\n"
    )


def _clip_card(info: dict, r: dict) -> dict:
    grid = (r["image_size"] // r["patch_size"]) ** 2
    vit_rows = _vit_rows(r)
    return dict(
        cls="CLIPModel",
        what="CLIP",
        arch=vit_rows
        + f"| input | {r['image_size']}x{r['image_size']}, patch {r['patch_size']} ({grid} patches + CLS) "
        f"| max_position_embeddings {r['max_position_embeddings']} |\n\n"
        f"projection_dim {r['projection_dim']}, quick_gelu",
        tokenizer=f"""CLIP-style byte-level BPE (lower-casing, `</w>` end-of-word suffix, CLIP split regex)
trained with `tokenizers` on every possible caption and prompt: vocab {info["vocab_size"]} (256 byte
symbols, 256 byte symbols + `</w>`, {info.get("n_merges")} merges, then specials). `<|startoftext|>` = {info.get("bos_id")},
`<|endoftext|>` = {info["eos_id"]} (eos = pad = unk, the largest id, as in OpenAI CLIP); every encoding is
wrapped in bos ... eos, by `CLIPTokenizerFast.from_pretrained` and by plain
`tokenizers.Tokenizer.from_file("tokenizer.json")` alike. `text_config.eos_token_id` = {info["eos_id"]}, so
the text tower pools at the first eos. Images: `CLIPImageProcessor`, shortest_edge {r["image_size"]},
center crop {r["image_size"]}, bicubic, CLIP mean/std.""",
        loss="""learnable logit scale clamped at 100. Loss = symmetric contrastive image<->caption loss with
multi-positive targets (in-batch images with the identical caption are all positives, so duplicates
are not penalised) + symmetric image<->class-prompt loss""",
        eval_classes="`CLIPModel`, `CLIPImageProcessor`, `CLIPTokenizerFast`",
    )


def _siglip_card(info: dict, r: dict) -> dict:
    grid = (r["image_size"] // r["patch_size"]) ** 2
    vit_rows = _vit_rows(r)
    return dict(
        cls="SiglipModel",
        what="SigLIP",
        arch=vit_rows
        + f"| input | {r['image_size']}x{r['image_size']}, patch {r['patch_size']} ({grid} patches, no CLS; "
        f"attention-pool head) | max_position_embeddings {r['max_position_embeddings']}, last-token pooling |\n\n"
        f"no projection (the text head maps onto the vision width {r['vision_hidden']}), gelu_pytorch_tanh",
        tokenizer=f"""SigLIP-style SentencePiece-like Unigram (`tokenizers`; lower-cased, punctuation
stripped, `</s>` = {info["eos_id"]} appended and used as pad), vocab {info["vocab_size"]}, built from the words of every caption
and prompt (single characters as the fallback); saved as `tokenizer.json`. Text is padded to max_length {r["max_position_embeddings"]} with no attention mask,
as SigLIP was trained. Images: `SiglipImageProcessor`, resize to {r["image_size"]}x{r["image_size"]} (bicubic),
mean = std = 0.5.""",
        loss="""learnable logit scale (from log 10, clamped at 100) and bias (from -10). Loss = SigLIP's pairwise
sigmoid loss over image x caption (every in-batch caption that describes the image is a positive) +
the same sigmoid loss over image x class prompt""",
        eval_classes="`AutoModel` (SiglipModel), `AutoImageProcessor`, `AutoTokenizer`",
    )


def _align_card(info: dict, r: dict) -> dict:
    stages = ", ".join(f"{o}" for o in ALIGN_VISION["out_channels"])
    return dict(
        cls="AlignModel",
        what="ALIGN",
        arch=f"""| tower | EfficientNet (MBConv, BatchNorm, swish): stem 32, stages {stages} channels, strides {ALIGN_VISION["strides"]}, repeats {ALIGN_VISION["num_block_repeats"]} | BERT: hidden {r["text_hidden"]} / MLP {4 * r["text_hidden"]}, {r["text_layers"]} layers / {r["text_heads"]} heads |
| input | {r["image_size"]}x{r["image_size"]}, average-pooled last stage = image embedding (no image projection) | max_position_embeddings {r["max_position_embeddings"]}, CLS pooling + text projection |

projection_dim {r["projection_dim"]}""",
        tokenizer=f"""BERT-style WordPiece (`tokenizers`; lower-cased, `[CLS] ... [SEP]`, `[PAD]` = {info["pad_id"]}),
vocab {info["vocab_size"]}, built from the words of every caption and prompt. Saved the transformers 5 way by
`AlignProcessor.save_pretrained`: `processor_config.json` with the image processor nested, no
`preprocessor_config.json`. Images: `EfficientNetImageProcessor`, resize and center crop {r["image_size"]},
`x / 127.5 - 1` (rescale offset, no normalisation), as kakaobrain/align-base.""",
        loss="""learnable temperature (from 0.07, at least 0.01). Loss = symmetric contrastive image<->caption loss
with multi-positive targets + symmetric image<->class-prompt loss""",
        eval_classes="`AutoModel` (AlignModel), `AutoImageProcessor`, `AutoTokenizer`",
    )


CARDS = {"clip": _clip_card, "siglip": _siglip_card, "align": _align_card}  # family -> its card paragraphs


def write_card(out: Path, info: dict, r=CLIP_SHAPES) -> None:
    import torch
    import transformers

    labels = shapes.labels()
    name = out.name if out.name.endswith("-shapes") else f"{r['family']}-shapes"
    c = CARDS[r["family"]](info, r)
    card = f"""# {name} (fixture model)

A tiny {c["what"]} (`transformers.{c["cls"]}`) trained from scratch on the procedural coloured-shapes
data set, shipped as an ordinary Hugging Face checkpoint folder. It exists so that tests and
the quickstart run offline against a *trained* model (accuracy after export / quantization
means something) and load through exactly the code path a real {c["what"]} checkpoint uses.
Not a general-purpose model: it only knows the shapes world.

## Data

`mmdeploy.common.datasets.shapes` (numpy + PIL, deterministic, fixed seed per split):
{r["image_size"]}x{r["image_size"]} RGB images of one shape, colours {", ".join(shapes.COLORS)};
shapes {", ".join(shapes.SHAPES)}; sizes {", ".join(shapes.SIZES)}; backgrounds
{", ".join(shapes.BACKGROUNDS)} (never equal to the shape colour); random position, small rotation,
colour jitter and pixel noise. Captions like "a small red circle on a blue background".
Training used the first {r["train_images"]} samples of the `train` split; the accuracy below is on
the first {r["eval_images"]} samples of the `test` split (its own seed).

## Architecture

| | vision | text |
|---|---|---|
{c["arch"]}, {info["n_params"] / 1e6:.2f}M parameters, float32 `model.safetensors`.

Tokenizer: {c["tokenizer"]}

## Training

```
python -m mmdeploy.exporter.train_fixtures {name} --out fixtures/{name} --seed {info["seed"]} --threads {info["threads"]}
```

CPU only, {info["threads"]} threads, seed {info["seed"]}. {r["steps"]} steps of batch {r["batch_size"]}, AdamW (lr {r["lr"]},
{r["warmup"]} warmup steps then cosine, weight decay {r["weight_decay"]}), grad clip 1.0, {c["loss"]}
("a photo of a red circle", all {len(labels)} prompts every step). The first {r["large_only_steps"]} steps see
large shapes only. Training took {info["train_s"] / 60:.1f} min
({info["total_s"] / 60:.1f} min end to end, including data generation and evaluation) on a shared 2-core
machine; at the fastest step rate seen in the run (an idle machine) the {r["steps"]} steps take about
{info["idle_train_s"] / 60:.1f} min. Versions:
torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}.

## Evaluation

Zero-shot top-1 over all {len(labels)} colour x shape labels with prompts "a photo of a {{color}} {{shape}}",
measured with the plain HF classes ({c["eval_classes"]}
loaded from this folder) on {r["eval_images"]} test images: **{info["accuracy"] * 100:.1f}%**.
"""
    (out / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=list(RECIPES))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value (experiments only; the card records the recipe used)",
    )
    a = ap.parse_args(argv)
    r = dict(RECIPES[a.model])
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in r:
            ap.error(f"unknown recipe key {k!r}; known: {', '.join(r)}")
        r[k] = type(r[k])(float(v)) if isinstance(r[k], int) else type(r[k])(v)
    info = train_shapes_fixture(a.out, a.seed, a.threads, r)
    return 0 if info["accuracy"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
