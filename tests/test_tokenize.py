"""runtimes.tokenize: parity with transformers' CLIP tokenizer on the shipped fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.errors import BundleError, InputError
from mmdeploy.runtimes.tokenize import TextTokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "clip-tokenizer"
BOS, EOS = 49406, 49407

SENTENCES = [
    "a photo of a cat",
    "A PHOTO OF A DOG.",
    "",
    "   ",
    "It's a bird! It's a plane! No, it's Superman... we'll see; they've gone",
    "numbers: 0 1 12 123 3.14159 -42 1,000,000 2024-06-01",
    "café naïve résumé Ünïcödé Straße 日本語のテキスト Привет Ελληνικά ΟΔΟΣ",
    "emoji 🐱🐶🚀 👍🏽 👨‍👩‍👧 🇫🇷",
    "tabs\tand\nnewlines   and    spaces",
    "email someone@example.com https://example.org/a?b=c&d=e#f &amp;",
    "“smart quotes” — em-dash – en-dash ½ x² µm °C",
    "<|startoftext|>special tokens in text<|endoftext|>",
    "the quick brown fox jumps over the lazy dog " * 12,  # > 77 tokens
    "0123456789" * 12,  # one token per digit: 120 + 2
    "supercalifragilisticexpialidocious " * 20,
]


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(FIXTURE))


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.from_file(FIXTURE / "tokenizer.json", max_length=77)


def test_fixture_is_the_clip_vocabulary(tok, hf):
    assert tok.vocab_size == 49408 and len(hf) == 49408
    assert hf.convert_tokens_to_ids("<|startoftext|>") == BOS
    assert hf.convert_tokens_to_ids("<|endoftext|>") == EOS
    assert hf.model_max_length == 77 and hf.pad_token_id == EOS
    assert tok.pad_id == EOS  # read from tokenizer_config.json
    assert tok(["a photo of a cat"])["input_ids"].tolist() == [[BOS, 320, 1125, 539, 320, 2368, EOS]]
    size = sum(p.stat().st_size for p in FIXTURE.iterdir())
    assert size < 8_000_000 and (FIXTURE / "README.md").is_file()


@pytest.mark.parametrize("max_length", [77, 16, 3])
def test_batch_parity_with_transformers(tok, hf, max_length):
    t = tok if max_length == 77 else TextTokenizer.from_file(FIXTURE, max_length=max_length)
    for batch in (SENTENCES, SENTENCES[:1], SENTENCES[2:6], SENTENCES[-3:], [s for s in SENTENCES if len(s) < 40]):
        ref = hf(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        got = t(batch)
        for key in ("input_ids", "attention_mask"):
            assert got[key].dtype == np.int64
            assert got[key].shape == ref[key].shape
            assert np.array_equal(got[key], ref[key]), (key, batch[:2])


def test_one_at_a_time_parity(tok, hf):
    for s in SENTENCES:
        assert tok([s])["input_ids"][0].tolist() == hf(s, truncation=True, max_length=77)["input_ids"]


def test_truncation_keeps_eos_and_padding_uses_eos(tok):
    long = "the quick brown fox jumps over the lazy dog " * 12
    out = tok([long, "a cat"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 77)
    assert ids[0, 0] == BOS and ids[0, -1] == EOS and mask[0].all()
    assert ids[1, :4].tolist() == [BOS, 320, 2368, EOS]
    assert (ids[1, 4:] == EOS).all() and mask[1].tolist() == [1] * 4 + [0] * 73
    assert tok.count_tokens(long) == 110 and tok.count_tokens(["a cat", ""]) == [4, 2]
    short = tok(["a cat", "a dog on a mat"])
    assert short["input_ids"].shape == (2, 7)  # padded to the longest, not to max_length


def test_pad_id_resolution(tmp_path):
    only_json = tmp_path / "t"
    only_json.mkdir()
    shutil.copy(FIXTURE / "tokenizer.json", only_json / "tokenizer.json")
    assert TextTokenizer.from_file(only_json / "tokenizer.json", max_length=77).pad_id == EOS  # fallback
    assert TextTokenizer.from_file(only_json, max_length=77, pad_id=0).pad_id == 0
    (only_json / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "!"}}))
    t = TextTokenizer.from_file(only_json / "tokenizer.json", max_length=77)
    assert t.pad_id == 0  # "!" is id 0 in the CLIP vocabulary
    assert t(["a", "a photo of a cat"])["input_ids"][0].tolist() == [BOS, 320, EOS, 0, 0, 0, 0]


def test_errors(tok, tmp_path):
    with pytest.raises(InputError, match="empty"):
        tok([])
    with pytest.raises(InputError, match=r"texts\[1\]"):
        tok(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError):
        tok(None)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        tok.count_tokens([b"bytes"])  # type: ignore[list-item]
    assert tok("a lone string")["input_ids"].shape[0] == 1
    with pytest.raises(BundleError, match="not found"):
        TextTokenizer.from_file(tmp_path / "missing.json", max_length=77)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BundleError, match="bad.json"):
        TextTokenizer.from_file(bad, max_length=77)
    with pytest.raises(BundleError, match="tokenizer.json: max_length must be an int >= 2"):
        TextTokenizer.from_file(FIXTURE, max_length=1)
    with pytest.raises(BundleError, match="pad id 99999 is not in"):
        TextTokenizer.from_file(FIXTURE, max_length=77, pad_id=99999)
