"""Train the captioning fixture, and rebuild the GPT-2 tokenizer the ViT-GPT2 twin uses (dev script).

    python -m mmdeploy.exporter.train_caption_fixture caption-shapes --out fixtures/caption-shapes \
        [--seed 0] [--threads 2]
    python -m mmdeploy.exporter.train_caption_fixture gpt2-tokenizer GPT2_TIKTOKEN --out fixtures/gpt2-tokenizer

``caption-shapes``: a tiny ``transformers.VisionEncoderDecoderModel`` (ViT encoder + GPT-2
decoder with cross-attention, the architecture of nlpconnect/vit-gpt2-image-captioning)
with its own GPT-2 style byte-level BPE tokenizer and a ``ViTImageProcessor`` config,
trained from scratch on CPU with teacher forcing on the procedural coloured-shapes captions
(:mod:`mmdeploy.common.datasets.shapes`). The folder is an ordinary HF checkpoint:
``VisionEncoderDecoderModel.from_pretrained`` / ``AutoTokenizer`` / ``ViTImageProcessor`` load it.

``gpt2-tokenizer``: OpenAI's GPT-2 byte-level BPE (50,257 tokens) rebuilt from
``gpt2.tiktoken`` (token bytes -> rank; MIT license, shipped in the ``openai-whisper``
sdist on PyPI as ``whisper/assets/gpt2.tiktoken``)::

    pip download --no-deps --no-binary :all: openai-whisper -d /tmp/w
    tar xzf /tmp/w/openai_whisper-*.tar.gz --wildcards '*/gpt2.tiktoken' -C /tmp/w

Needs the [export] extra (torch, transformers, tokenizers, safetensors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mmdeploy.common.datasets import shapes
from mmdeploy.exporter.train_fixtures import _to_pixels, init_sincos_2d

EOT = "<|endoftext|>"
VIT_MEAN = [0.5, 0.5, 0.5]
VIT_STD = [0.5, 0.5, 0.5]
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# caption-shapes recipe (the card is written from these)
CAPTION_SHAPES = dict(
    image_size=64,
    patch_size=8,
    vision_hidden=96,
    vision_layers=3,
    vision_heads=4,
    text_hidden=96,
    text_layers=2,
    text_heads=4,
    n_positions=32,
    train_images=12000,
    batch_size=128,
    steps=1500,
    lr=2e-3,
    weight_decay=0.05,
    warmup=100,
    max_length=16,
    eval_images=500,
)


# --------------------------------------------------------------------------- tokenizers


def shapes_captions() -> list[str]:
    return sorted(
        {
            shapes.caption_of(c, s, z, b)
            for c in shapes.COLORS
            for s in shapes.SHAPES
            for z in shapes.SIZES
            for b in shapes.BACKGROUNDS
            if b != c
        }
    )


def build_shapes_tokenizer(corpus: list[str]):
    """GPT-2 style byte-level BPE (no lower-casing, ' word' tokens) trained on the captions.

    ``<|endoftext|>`` is bos = eos = pad = unk, as in GPT-2 (id 0 here: trainer specials come first).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        model_max_length=CAPTION_SHAPES["n_positions"],
    )
    return hf


def save_tokenizer(hf_tok, out: Path, tokenizer_class: str = "GPT2Tokenizer") -> None:
    hf_tok.save_pretrained(out)
    for name in ("vocab.json", "merges.txt"):
        (out / name).unlink(missing_ok=True)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        tokenizer_class=tokenizer_class,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        add_prefix_space=False,
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": EOT, "eos_token": EOT, "pad_token": EOT, "unk_token": EOT}, indent=2) + "\n"
    )


def build_gpt2_tokenizer(tiktoken_file: Path, out: Path) -> dict:
    """OpenAI GPT-2 BPE from a tiktoken rank file, as a tokenizers ``tokenizer.json``.

    Merges are recovered the way tiktoken -> HF conversion does it (transformers'
    ``TikTokenConverter``): each multi-byte token is the merge of the two lower-ranked
    tokens that BPE on its bytes ends with. Checked on known GPT-2 ids.
    """
    import base64

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = {}
    for line in tiktoken_file.read_text().splitlines():
        if line.strip():
            b64, rank = line.split()
            ranks[base64.b64decode(b64)] = int(rank)
    byte_enc = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_enc[x] for x in b)

    def bpe(token: bytes, max_rank: int) -> list[bytes]:
        parts = [bytes([b]) for b in token]
        while True:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < max_rank and (best is None or r < best[1]):
                    best = (i, r)
            if best is None:
                return parts
            i = best[0]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = bpe(tok, rank)
        if len(parts) != 2:
            raise RuntimeError(f"token {tok!r} (rank {rank}) is not one merge of lower ranks")
        merges.append((to_str(parts[0]), to_str(parts[1])))
    eot_id = len(vocab)
    vocab[EOT] = eot_id
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    # known GPT-2 ids (from the GPT-2 paper's tokenizer / HF docs)
    checks = {"Hello world": [15496, 995], " the": [262], "<|endoftext|>": [50256]}
    for text, ids in checks.items():
        got = tok.encode(text).ids
        if got != ids:
            raise RuntimeError(f"GPT-2 tokenizer check failed for {text!r}: {got} != {ids}")
    # and the rank file's own BPE (tiktoken's algorithm, in Python) on varied text
    import regex

    from mmdeploy.common.datasets.photos import CAPTIONS
    from mmdeploy.common.datasets.sentences import all_sentences

    texts = list(CAPTIONS) + all_sentences()[:200] + ["Ünïcödé — 東京 🚀 it's   spaced\n\tout", "x" * 40]
    for text in texts:
        ref = []
        for piece in regex.findall(GPT2_PATTERN, text):
            ref += [ranks[p] for p in bpe(piece.encode(), 1 << 30)]
        if tok.encode(text).ids != ref:
            raise RuntimeError(f"GPT-2 tokenizer differs from the rank file's BPE on {text!r}")
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=False)
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": EOT,
                "eos_token": EOT,
                "unk_token": EOT,
                "pad_token": EOT,
                "add_prefix_space": False,
                "model_max_length": 1024,
            },
            indent=2,
        )
        + "\n"
    )
    sha = hashlib.sha256(tiktoken_file.read_bytes()).hexdigest()
    (out / "README.md").write_text(f"""# GPT-2 tokenizer (OpenAI byte-level BPE, rebuilt offline)

The byte-level BPE tokenizer of OpenAI GPT-2 (and of nlpconnect/vit-gpt2-image-captioning's
decoder): {len(vocab)} tokens, `<|endoftext|>` = {eot_id} (bos = eos = pad = unk, as in GPT-2).
Used by the `vit-gpt2` shape twin in models.yaml to decode its (random) token ids offline.

- Source: `gpt2.tiktoken` (sha256 `{sha}`), OpenAI's GPT-2 BPE ranks as shipped in the
  `openai-whisper` sdist on PyPI (`whisper/assets/gpt2.tiktoken`).
- License: MIT, Copyright (c) 2019 OpenAI (https://github.com/openai/gpt-2/blob/master/LICENSE);
  openai-whisper is MIT, Copyright (c) 2022 OpenAI.
- Vocabulary: the 50,256 ranked byte sequences (ids = ranks) + `<|endoftext|>`; {len(merges)} merges,
  each recovered as the last BPE merge of its token over lower-ranked tokens.
- Checked: "Hello world" -> [15496, 995], " the" -> [262], "<|endoftext|>" -> [50256]; and identical
  ids to BPE run directly on the rank file (tiktoken's algorithm) on {len(texts)} varied texts.
- Rebuild: `python -m mmdeploy.exporter.train_caption_fixture gpt2-tokenizer GPT2_TIKTOKEN --out fixtures/gpt2-tokenizer`.
""")
    return {"vocab": len(vocab), "merges": len(merges), "eot": eot_id}


# --------------------------------------------------------------------------- model


def build_model(vocab_size: int, eot_id: int, r=CAPTION_SHAPES):
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    enc = ViTConfig(
        image_size=r["image_size"],
        patch_size=r["patch_size"],
        hidden_size=r["vision_hidden"],
        num_hidden_layers=r["vision_layers"],
        num_attention_heads=r["vision_heads"],
        intermediate_size=4 * r["vision_hidden"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    dec = GPT2Config(
        vocab_size=vocab_size,
        n_positions=r["n_positions"],
        n_embd=r["text_hidden"],
        n_layer=r["text_layers"],
        n_head=r["text_heads"],
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        decoder_start_token_id=eot_id,
        add_cross_attention=True,
        is_decoder=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = eot_id
    cfg.pad_token_id = eot_id
    cfg.eos_token_id = eot_id
    cfg.bos_token_id = eot_id
    model = VisionEncoderDecoderModel(config=cfg)
    init_sincos_2d(model.encoder.embeddings.position_embeddings, r["image_size"] // r["patch_size"])
    model.generation_config.max_length = r["max_length"]
    model.generation_config.decoder_start_token_id = eot_id
    model.generation_config.eos_token_id = eot_id
    model.generation_config.pad_token_id = eot_id
    model.generation_config.bos_token_id = eot_id
    return model


def image_processor_config(image_size: int) -> dict:
    return {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": VIT_MEAN,
        "image_processor_type": "ViTImageProcessor",
        "image_std": VIT_STD,
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }


# --------------------------------------------------------------------------- eval


def exact_match(folder: Path, n: int = 500, split: str = "test", batch: int = 100, num_beams: int = 1) -> dict:
    """Greedy (or beam) captions of the test split with the plain HF classes vs the references."""
    import torch
    from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor

    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    proc = ViTImageProcessor.from_pretrained(folder)
    samples = shapes.generate(split, n, image_size=proc.size["height"])
    hits, wrong = 0, []
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            px = proc(images=[s.image for s in chunk], return_tensors="pt")["pixel_values"]
            ids = model.generate(pixel_values=px, do_sample=False, num_beams=num_beams)
            for s, text in zip(chunk, tok.batch_decode(ids, skip_special_tokens=True)):
                ok = text.strip() == s.caption
                hits += ok
                if not ok and len(wrong) < 5:
                    wrong.append((s.caption, text.strip()))
    return {"exact_match": hits / len(samples), "n": len(samples), "examples_wrong": wrong}


# --------------------------------------------------------------------------- training


def train_caption_shapes(out: Path, seed: int = 0, threads: int = 2, r=CAPTION_SHAPES) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    corpus = shapes_captions()
    hf_tok = build_shapes_tokenizer(corpus)
    save_tokenizer(hf_tok, out)
    eot = hf_tok.convert_tokens_to_ids(EOT)
    lens = [len(hf_tok(c)["input_ids"]) for c in corpus]
    print(f"[tokenizer] vocab {len(hf_tok)}, eot {eot}, caption tokens {min(lens)}..{max(lens)}", flush=True)

    train = shapes.generate("train", r["train_images"], image_size=r["image_size"])
    pix = torch.from_numpy(_to_pixels(train))
    mean = torch.tensor(VIT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(VIT_STD).view(1, 3, 1, 1)
    caps = sorted({s.caption for s in train})
    cap_index = {c: i for i, c in enumerate(caps)}
    cap_of = torch.tensor([cap_index[s.caption] for s in train])
    T = max(lens) + 1
    labels_table = torch.full((len(caps), T), -100, dtype=torch.long)
    for i, c in enumerate(caps):
        ids = hf_tok(c)["input_ids"] + [eot]
        labels_table[i, : len(ids)] = torch.tensor(ids)
    print(f"[data] {len(train)} train images, {len(caps)} distinct captions, {time.time() - t0:.1f}s", flush=True)

    model = build_model(len(hf_tok), eot, r)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {n_params / 1e6:.2f}M parameters", flush=True)
    decay = [
        p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "wte" not in n and "wpe" not in n
    ]
    ids_decay = {id(p) for p in decay}
    no_decay = [p for p in model.parameters() if id(p) not in ids_decay]
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
    model.train()
    bs = r["batch_size"]
    order, pos = rng.permutation(len(train)), 0
    t_train = time.time()
    for step in range(steps):
        if pos + bs > len(order):
            order, pos = rng.permutation(len(train)), 0
        idx = torch.from_numpy(order[pos : pos + bs])
        pos += bs
        x = (pix[idx].float() / 255.0 - mean) / std
        labels = labels_table[cap_of[idx]]
        loss = model(pixel_values=x, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            el = time.time() - t_train
            print(
                f"[train] step {step:5d}/{steps} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"{el:.0f}s (eta {el / (step + 1) * (steps - step - 1):.0f}s)",
                flush=True,
            )
    train_s = time.time() - t_train

    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor_config(r["image_size"]), indent=2) + "\n")
    ev = exact_match(out, n=r["eval_images"])
    ev_beam = exact_match(out, n=r["eval_images"], num_beams=3)
    total_s = time.time() - t0
    print(
        f"[eval] greedy exact match on test ({r['eval_images']} images): {ev['exact_match']:.4f}; "
        f"beam 3: {ev_beam['exact_match']:.4f}; wrong e.g. {ev['examples_wrong'][:3]}",
        flush=True,
    )
    info = dict(
        exact_match=ev["exact_match"],
        exact_match_beam3=ev_beam["exact_match"],
        train_s=train_s,
        total_s=total_s,
        n_params=n_params,
        vocab_size=len(hf_tok),
        eot=eot,
        seed=seed,
        threads=threads,
        caption_tokens=(min(lens), max(lens)),
    )
    write_card(out, info, r)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"[done] {out} ({size / 1e6:.2f} MB) in {total_s:.0f}s", flush=True)
    return info


def write_card(out: Path, info: dict, r=CAPTION_SHAPES) -> None:
    import torch
    import transformers

    card = f"""# caption-shapes (fixture model)

A tiny ViT + GPT-2 captioner (`transformers.VisionEncoderDecoderModel`, the architecture of
nlpconnect/vit-gpt2-image-captioning) trained from scratch on the procedural coloured-shapes
data set, shipped as an ordinary Hugging Face checkpoint folder. Tests and the quickstart use it
to check that exported captioners (and their INT8 variants) caption like PyTorch, offline, on a
*trained* model. It only knows the shapes world.

## Data

`mmdeploy.common.datasets.shapes` (numpy + PIL, deterministic, fixed seed per split):
{r["image_size"]}x{r["image_size"]} RGB images of one shape, colours {", ".join(shapes.COLORS)}; shapes
{", ".join(shapes.SHAPES)}; sizes {", ".join(shapes.SIZES)}; backgrounds {", ".join(shapes.BACKGROUNDS)}
(never the shape's colour); random position, small rotation, colour jitter, pixel noise.
Caption = "a {{size}} {{color}} {{shape}} on a {{background}} background".
Training used the first {r["train_images"]} samples of the `train` split; evaluation the first
{r["eval_images"]} of the `test` split (its own seed).

## Architecture

| | encoder (ViT) | decoder (GPT-2, cross-attention) |
|---|---|---|
| hidden / MLP | {r["vision_hidden"]} / {4 * r["vision_hidden"]} | {r["text_hidden"]} / {4 * r["text_hidden"]} |
| layers / heads | {r["vision_layers"]} / {r["vision_heads"]} | {r["text_layers"]} / {r["text_heads"]} |
| input | {r["image_size"]}x{r["image_size"]}, patch {r["patch_size"]} ({(r["image_size"] // r["patch_size"]) ** 2} patches + CLS) | n_positions {r["n_positions"]}, tied lm_head |

{info["n_params"] / 1e6:.2f}M parameters, float32 `model.safetensors`.

Tokenizer: GPT-2 style byte-level BPE (no lower-casing, words carry their leading space)
trained with `tokenizers` on all {len(shapes_captions())} possible captions: vocab {info["vocab_size"]};
`<|endoftext|>` = {info["eot"]} is bos = eos = pad = unk and the decoder start token (as in
nlpconnect/vit-gpt2-image-captioning, where it is 50256). A caption is {info["caption_tokens"][0]}..{info["caption_tokens"][1]} tokens.
Images: `ViTImageProcessor`, resize to {r["image_size"]}x{r["image_size"]} (bilinear), mean = std = 0.5.
Generation defaults (`generation_config.json`): greedy, max_length {r["max_length"]}.

## Training

```
python -m mmdeploy.exporter.train_caption_fixture caption-shapes --out fixtures/caption-shapes --seed {info["seed"]} --threads {info["threads"]}
```

CPU only, {info["threads"]} threads, seed {info["seed"]}. Teacher forcing, cross-entropy on caption tokens + eos
(`labels`; the model shifts them right after the start token); the ViT position embeddings start from a
2-D sin-cos table (with random ones the tiny encoder learns colours fast and shapes slowly). {r["steps"]} steps of batch {r["batch_size"]}, AdamW
(lr {r["lr"]}, {r["warmup"]} warmup steps then cosine, weight decay {r["weight_decay"]}), grad clip 1.0. Training took
{info["train_s"] / 60:.1f} min ({info["total_s"] / 60:.1f} min end to end incl. data and evaluation; on 2 cores shared with other jobs) with torch
{torch.__version__}, transformers {transformers.__version__} on {platform.machine()}.

## Evaluation

Exact match of the generated caption (decoded with `skip_special_tokens=True`, stripped) with
the reference, `model.generate(pixel_values, do_sample=False)` with the plain HF classes loaded
from this folder, on {r["eval_images"]} test images: greedy **{info["exact_match"] * 100:.1f}%**,
beam search (num_beams=3) **{info["exact_match_beam3"] * 100:.1f}%**.
"""
    (out / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a1 = sub.add_parser("caption-shapes")
    a1.add_argument("--out", type=Path, required=True)
    a1.add_argument("--seed", type=int, default=0)
    a1.add_argument("--threads", type=int, default=2)
    a1.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value (experiments only; the card records the recipe used)",
    )
    a2 = sub.add_parser("gpt2-tokenizer")
    a2.add_argument("tiktoken", type=Path)
    a2.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.what == "gpt2-tokenizer":
        print(build_gpt2_tokenizer(a.tiktoken, a.out))
        return 0
    r = dict(CAPTION_SHAPES)
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in r:
            ap.error(f"unknown recipe key {k!r}; known: {', '.join(r)}")
        r[k] = type(r[k])(float(v)) if isinstance(r[k], (int, float)) else type(r[k])(v)
    info = train_caption_shapes(a.out, a.seed, a.threads, r)
    return 0 if info["exact_match"] >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
