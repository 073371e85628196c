"""Rebuild OpenAI's CLIP tokenizer offline and save it as a Hugging Face fast tokenizer.

    python -m mmdeploy.exporter.make_clip_tokenizer BPE_GZ --out fixtures/clip-tokenizer

BPE_GZ is ``bpe_simple_vocab_16e6.txt.gz``, OpenAI's CLIP BPE merges (MIT license), e.g.
from the open_clip_torch wheel on PyPI::

    pip download --no-deps open_clip_torch -d /tmp/oc
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz -d /tmp/oc

The vocabulary is built exactly as ``clip/simple_tokenizer.py`` builds it: the 256
byte-level characters, the same 256 with ``</w>``, the first 48,894 merges joined, then
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49,408 entries. transformers
loads vocab.json + merges.txt with ``CLIPTokenizer`` (in transformers 5 that class *is*
the fast, tokenizers-backed one; ``CLIPTokenizerFast`` is gone and there is no Python
"slow" CLIP tokenizer any more), so the check here runs a pure-Python port of OpenAI's
BPE (``OpenAIReferenceTokenizer``) against it on a few hundred varied sentences.

Writes tokenizer.json, tokenizer_config.json (model_max_length 77) and a README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import unicodedata
from functools import lru_cache
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # as in OpenAI's simple_tokenizer: merges[1:49152-256-2+1]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
KEEP = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

README = """\
# CLIP tokenizer (OpenAI BPE, rebuilt offline)

The byte-level BPE tokenizer of OpenAI CLIP (ViT-B/32, ViT-L/14, ...; the same files as
`openai/clip-vit-base-patch32` on the Hugging Face hub), saved by transformers'
`CLIPTokenizer` (fast, tokenizers-backed) with `model_max_length` {max_len}.

- Source: `bpe_simple_vocab_16e6.txt.gz` (sha256 `{sha}`), OpenAI's CLIP BPE merges, as
  shipped in the `open_clip_torch` {oc_version} wheel on PyPI (`open_clip/`).
- License: MIT, Copyright (c) 2021 OpenAI (https://github.com/openai/CLIP/blob/main/LICENSE).
- Vocabulary: {vocab} tokens; `<|startoftext|>` = {bos}, `<|endoftext|>` = {eos} (also the
  pad and unk token).
- Rebuild: `python -m mmdeploy.exporter.make_clip_tokenizer BPE_GZ --out fixtures/clip-tokenizer`.
- Checked against a pure-Python port of OpenAI's `simple_tokenizer.py` BPE on {n} sentences
  ({n_same} identical). OpenAI's own tokenizer also runs `ftfy.fix_text` and
  `html.unescape` before BPE; Hugging Face's does not (so `&amp;` stays three tokens here),
  and lower-cases character by character (a final capital sigma becomes σ, not ς).
"""


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI/GPT-2 byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_merges(bpe_gz: Path) -> list[tuple[str, str]]:
    with gzip.open(bpe_gz) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"{bpe_gz}: expected {N_MERGES} merge pairs, got {len(merges)}")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    enc = {tok: i for i, tok in enumerate(vocab)}
    if len(enc) != VOCAB_SIZE:
        raise SystemExit(f"vocabulary has {len(enc)} distinct entries, expected {VOCAB_SIZE}")
    return enc


class OpenAIReferenceTokenizer:
    """OpenAI's ``simple_tokenizer.SimpleTokenizer`` BPE, minus ftfy/html clean-up."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        import regex

        self.encoder = vocab
        self.byte_encoder = bytes_to_unicode()
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {BOS: BOS, EOS: EOS}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        text = " ".join(unicodedata.normalize("NFC", text).split())
        # Lower-case char by char, as the tokenizers normalizer does: str.lower() would
        # apply Greek final sigma (ΟΔΟΣ -> οδος), tokenizers gives οδοσ.
        text = "".join(c.lower() for c in text)
        ids = [self.encoder[BOS]]
        for token in self.pat.findall(text):
            if token in (BOS, EOS):
                ids.append(self.encoder[token])
                continue
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        ids.append(self.encoder[EOS])
        return ids


def check_sentences() -> list[str]:
    """A few hundred varied sentences: punctuation, unicode, numbers, contractions, long."""
    import random

    base = [
        "a photo of a cat",
        "A photo of a DOG.",
        "a photo of a red circle on a blue background",
        "two green triangles and one yellow square",
        "It's a bird! It's a plane! No, it's Superman...",
        "we'll see; they've gone, I'm here, you'd know, she'll go, isn't it?",
        "DON'T SHOUT, it’s only “smart quotes” — and an em-dash – en-dash",
        "numbers: 0 1 12 123 3.14159 -42 1,000,000 2024-06-01 10:30pm",
        "prices $9.99, €10, £5, ¥100 and 50% off!!!",
        "email me at someone@example.com or see https://example.org/a?b=c&d=e#f",
        "café naïve résumé façade coöperate Ünïcödé",
        "Straße, größer, Ärger — ÀÉÎÕÜ çñ",
        "日本語のテキストと漢字",
        "中文句子，带有标点符号。",
        "한국어 문장입니다",
        "Привет, как дела? Москва",
        "Ελληνικά γράμματα αβγδ, ΟΔΥΣΣΕΥΣ ΚΑΙ ΟΔΟΣ",
        "مرحبا بالعالم",
        "שלום עולם",
        "हिन्दी वाक्य",
        "emoji 🐱🐶🚀 👍🏽 👨‍👩‍👧 flags 🇫🇷",
        "tabs\tand\nnewlines\r\n   and    many   spaces   ",
        "   leading and trailing whitespace   ",
        "",
        "a",
        "!!!",
        "???!!!...,,,;;;:::",
        "(parentheses) [brackets] {braces} <angles>",
        "under_score snake_case camelCase PascalCase kebab-case",
        "C++ C# F# .NET node.js",
        "#hashtag @mention ~tilde ^caret |pipe \\backslash /slash",
        "x² + y² = z³, ½ ¼ ¾, µm, °C",
        "“quoted” ‘single’ «guillemets» „low“",
        "the quick brown fox jumps over the lazy dog " * 10,
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "0123456789" * 10,
        "Mixed CASE wOrDs ThAt ArE wEiRd",
        "<|startoftext|>a photo<|endoftext|>",
        "&amp; &lt;tag&gt;",
        "zero​width joiner‍ and non-breaking space here",
        "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ letters",
        "e\u0301 combining accent vs é",
    ]
    rng = random.Random(1234)
    words = (
        "photo picture image drawing painting sketch render a an the of with on in under over "
        "red green blue yellow orange purple black white small large tiny huge circle square "
        "triangle star cat dog bird car tree house mountain river city night day sunny rainy "
        "person people man woman child 3d low-poly pixel-art watercolor oil isn't can't won't "
        "café über naïve 東京 北京 Москва ★ ♥ → © ™ 2nd 3rd 42 7.5 100%"
    ).split()
    punct = ["", "", "", ",", ".", "!", "?", ";", ":", " -", "'s", "...", " &", " /"]
    out = list(base)
    while len(out) < 320:
        n = rng.randint(1, 40 if rng.random() < 0.8 else 120)
        sent = " ".join(rng.choice(words) + rng.choice(punct) for _ in range(n))
        if rng.random() < 0.3:
            sent = sent.upper() if rng.random() < 0.5 else sent.capitalize()
        out.append(sent)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mmdeploy.exporter.make_clip_tokenizer", description=__doc__.split("\n")[0]
    )
    ap.add_argument("bpe_gz", type=Path, help="bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--out", type=Path, default=Path("fixtures/clip-tokenizer"))
    ap.add_argument("--open-clip-version", default="3.3.0", help="for the README only")
    args = ap.parse_args(argv)

    import hashlib

    from transformers import CLIPTokenizer

    if not args.bpe_gz.is_file():
        print(f"error: {args.bpe_gz} not found", file=sys.stderr)
        return 2
    merges = read_merges(args.bpe_gz)
    vocab = build_vocab(merges)
    sha = hashlib.sha256(args.bpe_gz.read_bytes()).hexdigest()

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (src / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
        )
        tok = CLIPTokenizer.from_pretrained(str(src), model_max_length=MODEL_MAX_LENGTH)

        ids = {t: tok.convert_tokens_to_ids(t) for t in (BOS, EOS)}
        if ids != {BOS: 49406, EOS: 49407} or len(tok) != VOCAB_SIZE:
            print(f"error: special ids {ids}, vocab size {len(tok)}", file=sys.stderr)
            return 1
        if tok.pad_token_id != 49407:
            print(f"error: pad id {tok.pad_token_id}, expected 49407", file=sys.stderr)
            return 1

        ref = OpenAIReferenceTokenizer(vocab, merges)
        sentences = check_sentences()
        diffs = []
        for s in sentences:
            a, b = ref.encode(s), tok(s)["input_ids"]
            if a != b:
                diffs.append((s, a, b))
        for s, a, b in diffs[:10]:
            print(f"differs: {s[:60]!r}\n  openai {a[:20]}\n  hf     {b[:20]}", file=sys.stderr)
        n_same = len(sentences) - len(diffs)
        print(f"reference check: {n_same}/{len(sentences)} sentences identical")

        # Write beside the target, then swap in: never a half-written folder.
        stage = Path(
            tempfile.mkdtemp(prefix=".clip-tokenizer-", dir=args.out.parent if args.out.parent.exists() else None)
        )
        try:
            tok.save_pretrained(str(stage))
            for p in stage.iterdir():
                if p.name not in KEEP:
                    p.unlink()
            (stage / "README.md").write_text(
                README.format(
                    max_len=MODEL_MAX_LENGTH,
                    sha=sha,
                    oc_version=args.open_clip_version,
                    vocab=VOCAB_SIZE,
                    bos=ids[BOS],
                    eos=ids[EOS],
                    n=len(sentences),
                    n_same=n_same,
                ),
                encoding="utf-8",
            )
            stage.chmod(0o755)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if args.out.exists():
                old = args.out.with_name(args.out.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                args.out.rename(old)
            stage.rename(args.out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB): {', '.join(sorted(p.name for p in args.out.iterdir()))}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
