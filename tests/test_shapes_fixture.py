"""Coloured-shapes generator and the shipped clip-shapes fixture model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.common.datasets import shapes

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "clip-shapes"


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_vocabulary():
    assert len(shapes.COLORS) >= 6 and len(shapes.SHAPES) >= 6
    labels = shapes.labels()
    assert len(labels) == len(set(labels)) == len(shapes.COLORS) * len(shapes.SHAPES)
    assert "red circle" in labels
    assert shapes.prompt("red circle") == "a photo of a red circle"


def test_same_split_same_bytes():
    a = shapes.generate("val", 20)
    b = shapes.generate("val", 20)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    # a prefix of a split is the same samples
    c = shapes.generate("val", 5)
    assert [s.image.tobytes() for s in c] == [s.image.tobytes() for s in a[:5]]


def test_splits_differ():
    imgs = {split: [s.image.tobytes() for s in shapes.generate(split, 10)] for split in shapes.SPLITS}
    assert set(imgs) == {"train", "val", "test"}
    assert not set(imgs["train"]) & set(imgs["val"])
    assert not set(imgs["train"]) & set(imgs["test"])
    assert not set(imgs["val"]) & set(imgs["test"])
    with pytest.raises(ValueError):
        shapes.generate("nope", 1)


def test_samples_match_their_fields():
    samples = shapes.generate("test", 200)
    for s in samples:
        assert s.image.mode == "RGB" and s.image.size == (64, 64)
        assert s.color in shapes.COLORS and s.shape in shapes.SHAPES
        assert s.size in ("small", "large")
        assert s.background != s.color
        assert s.caption == f"a {s.size} {s.color} {s.shape} on a {s.background} background"
        assert shapes.label_of(s) == f"{s.color} {s.shape}"
        # the image is not a flat colour: the shape and the noise are there
        assert np.asarray(s.image).std() > 5
    # every class and both sizes show up in a few hundred samples
    assert len({shapes.label_of(s) for s in samples}) >= 30
    assert {s.size for s in samples} == {"small", "large"}
    assert shapes.generate("test", 1, image_size=96)[0].image.size == (96, 96)


def test_write_split(tmp_path):
    out = shapes.write_split(tmp_path / "calib", "val", n=12)
    assert out == tmp_path / "calib"
    samples = shapes.generate("val", 12)
    caps = [line.split("\t") for line in (out / "captions.tsv").read_text().splitlines()]
    labs = [line.split("\t") for line in (out / "labels.tsv").read_text().splitlines()]
    assert len(caps) == len(labs) == 12
    assert sorted(p.name for p in out.glob("*.png")) == sorted(name for name, _ in caps)
    for (name, cap), (name2, lab), s in zip(caps, labs, samples):
        assert name == name2
        assert cap == s.caption and lab == shapes.label_of(s)
        from PIL import Image

        with Image.open(out / name) as im:
            assert im.mode == "RGB"
            assert im.tobytes() == s.image.tobytes()  # PNG is lossless


# --------------------------------------------------------------------------- fixture


def test_fixture_folder_is_small_and_complete():
    files = {p.name for p in FIXTURE.iterdir()}
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "README.md",
    ):
        assert name in files
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) <= 10 * 1024 * 1024


def test_fixture_tokenizer_plain_and_hf_agree():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizerFast.from_pretrained(FIXTURE)
    raw = tokenizers.Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    cfg = json.loads((FIXTURE / "config.json").read_text())
    eos = hf.convert_tokens_to_ids("<|endoftext|>")
    bos = hf.convert_tokens_to_ids("<|startoftext|>")
    assert hf.eos_token_id == hf.pad_token_id == eos
    assert cfg["text_config"]["eos_token_id"] == eos
    for text in ["a photo of a red circle", "A small BLUE hexagon on a white background", "unseen words!"]:
        ids = hf(text)["input_ids"]
        assert ids == raw.encode(text).ids
        assert ids[0] == bos and ids[-1] == eos and eos not in ids[1:-1]


def test_fixture_zero_shot_accuracy():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.CLIPModel.from_pretrained(FIXTURE).eval()
    processor = transformers.CLIPProcessor.from_pretrained(FIXTURE)
    labels = shapes.labels()
    samples = shapes.generate("test", 300)
    with torch.no_grad():
        inputs = processor(
            text=[shapes.prompt(lb) for lb in labels],
            images=[s.image for s in samples],
            return_tensors="pt",
            padding=True,
        )
        logits = model(**inputs).logits_per_image  # (images, labels)
    pred = logits.argmax(-1).tolist()
    acc = sum(labels[p] == shapes.label_of(s) for p, s in zip(pred, samples)) / len(samples)
    from .conftest import FIXTURE_MIN_TOP1

    assert acc >= FIXTURE_MIN_TOP1, f"zero-shot top-1 {acc:.3f}"
