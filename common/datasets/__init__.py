"""Data sets that `bench --data` and `--calib` accept: a name (`shapes`, `photos`), an image
folder (optional labels.tsv / captions.tsv beside the images) or a text file (one line each).

No torch here: calibration and benchmarks feed the runtime's own pre-processing.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
NAMED = ("shapes", "photos", "sentences")


@dataclass
class DataSet:
    """Images and/or texts, with per-image class labels when the set has them."""

    name: str
    images: list[Any] = field(default_factory=list)  # paths or PIL images
    texts: list[str] = field(default_factory=list)
    labels: list[str] | None = None  # class of each image (zero-shot accuracy)
    class_names: list[str] | None = None
    template: str = "{}"  # prompt for a class name
    captions: list[str] | None = None  # reference caption of each image
    qa: list[tuple[Any, str, str]] | None = None  # (image, question, reference answer): VQA accuracy

    def image_batch(self, n: int) -> list[Any]:
        if not self.images:
            raise InputError(f"data set {self.name} has no images")
        return [self.images[i % len(self.images)] for i in range(n)]

    def text_batch(self, n: int) -> list[str]:
        if not self.texts:
            raise InputError(f"data set {self.name} has no texts")
        return [self.texts[i % len(self.texts)] for i in range(n)]


def _read_tsv(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row[0]: row[1] for row in csv.reader(f, delimiter="\t") if len(row) >= 2}


def _folder(path: Path, limit: int | None) -> DataSet:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit:
        files = files[:limit]
    if not files:
        raise InputError(f"{path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    ds = DataSet(name=str(path), images=[str(p) for p in files])
    if (path / "labels.tsv").is_file():
        table = _read_tsv(path / "labels.tsv")
        ds.labels = [table.get(p.name) for p in files]
        if any(l is None for l in ds.labels):
            missing = next(p.name for p, l in zip(files, ds.labels) if l is None)
            raise InputError(f"{path / 'labels.tsv'} has no label for {missing}")
        ds.class_names = sorted(set(ds.labels))
        ds.template = "a photo of a {}"
    if (path / "questions.tsv").is_file():  # filename <TAB> question <TAB> answer, any number per image
        with open(path / "questions.tsv", newline="") as f:
            rows = [r for r in csv.reader(f, delimiter="\t") if len(r) >= 3]
        by_name = {p.name: str(p) for p in files}
        missing = next((r[0] for r in rows if r[0] not in by_name), None)
        if missing is not None:
            raise InputError(f"{path / 'questions.tsv'} names {missing}, which is not an image in {path}")
        ds.qa = [(by_name[r[0]], r[1], r[2]) for r in rows]
    if (path / "captions.tsv").is_file():
        table = _read_tsv(path / "captions.tsv")
        ds.captions = [table.get(p.name, "") for p in files]
        ds.texts = [c for c in ds.captions if c]
    return ds


def _text_file(path: Path, limit: int | None) -> DataSet:
    try:
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file (one text per line)") from None
    if not lines:
        raise InputError(f"{path} has no lines of text")
    return DataSet(name=str(path), texts=lines[:limit] if limit else lines)


def shapes_set(split: str = "test", n: int | None = None) -> DataSet:
    from . import shapes

    samples = shapes.generate(split, n)
    return DataSet(
        name=f"shapes/{split}",
        images=[s.image for s in samples],
        texts=[s.caption for s in samples],
        labels=[shapes.label_of(s) for s in samples],
        class_names=shapes.labels(),
        template="a photo of a {}",
        captions=[s.caption for s in samples],
        qa=shapes_questions(samples),
    )


def shapes_questions(samples) -> list[tuple[Any, str, str]]:
    """Every vqa-shapes question of each sample (a fixed seed picks the yes/no near misses)."""
    import numpy as np

    from . import shapes

    rng = np.random.default_rng(7)
    return [(s.image, q, a) for s in samples for q, a in shapes.questions(s, rng)]


def photos_set(split: str = "test") -> DataSet:
    """Real photos: `test` (the 8 evaluation photos) or `train` (12 other real images, for calibration)."""
    from .photos import CAPTIONS, photos

    split = "train" if split == "train" else "test"
    return DataSet(name=f"photos/{split}", images=list(photos(split)), texts=list(CAPTIONS))


def sentences_set(split: str = "test") -> DataSet:
    """Real sentences; calibration (train) and evaluation (test) take alternate ones, so a
    quantized model is never judged on the sentences it was calibrated on."""
    from .sentences import all_sentences

    texts = all_sentences()
    if split in ("train", "test"):
        texts = texts[0::2] if split == "train" else texts[1::2]
    return DataSet(name=f"sentences/{split}", texts=texts)


def check_spec(spec: str, flag: str = "--data") -> None:
    """What open_dataset would refuse, without loading anything: a check before long work."""
    if not spec or not spec.strip():
        raise InputError(f"{flag} is empty: give {', '.join(NAMED)}, an image folder or a text file")
    if spec in NAMED:
        return
    path = Path(os.path.expanduser(spec))
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"{flag} {spec}: is one image: pass the folder that holds the images")
    if not path.exists():
        raise InputError(f"{flag} {spec!r} not found: give {', '.join(NAMED)}, an image folder or a text file")


def open_dataset(spec: str, split: str = "test", limit: int | None = None) -> DataSet:
    """`shapes` (split: train/val/test), `photos`, `sentences`, an image folder, or a text file."""
    if spec == "shapes":
        return shapes_set(split, limit)
    if spec == "photos":
        return photos_set(split)
    if spec == "sentences":
        return sentences_set(split)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return _folder(path, limit)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(f"{path} is one image: pass the folder that holds the images")
        return _text_file(path, limit)
    raise InputError(f"data {spec!r} not found: give {', '.join(NAMED)}, an image folder or a text file")
