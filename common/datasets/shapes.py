"""Procedural "coloured shapes" data set (numpy + PIL only, no torch).

Every sample is a small RGB image of one coloured shape (circle, square, ...) of a
given size class (small / large) at a random position on a plain background of a
different colour, with a little pixel noise, plus a caption such as
"a small red circle on a blue background".

Splits "train", "val" and "test" each derive from their own fixed seed, so the same
split (and ``n``, ``image_size``) gives the same bytes every time.  Sample ``i`` of a
split only depends on the split seed and ``i``: ``generate("test", 300)`` is the
first 300 samples of ``generate("test")``.

Used to train and evaluate the shipped fixture models (see ``tools/fixtures`` in the checkout)
and, written out with :func:`write_split`, as the image folders the
``--calib DIR`` / ``--data DIR`` CLI flags read.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "BACKGROUNDS",
    "SPLITS",
    "Sample",
    "generate",
    "labels",
    "prompt",
    "label_of",
    "caption_of",
    "write_split",
    "questions",
]

# Shape colours (RGB centre values; each sample jitters them slightly).
_COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
# Background colours.  "blue" / "green" overlap with shape colours on purpose (a blue
# square never sits on a blue background); the others are never shape colours.
_BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "brown": (110, 70, 40),
    "blue": (30, 60, 220),
    "green": (30, 170, 40),
}

COLORS: list[str] = list(_COLOR_RGB)
SHAPES: list[str] = ["circle", "square", "triangle", "star", "cross", "hexagon"]
SIZES: list[str] = ["small", "large"]
BACKGROUNDS: list[str] = list(_BACKGROUND_RGB)

SPLITS: dict[str, int] = {"train": 1_000_003, "val": 2_000_003, "test": 3_000_003}
DEFAULT_N: dict[str, int] = {"train": 24000, "val": 500, "test": 500}

_SUPERSAMPLE = 4  # draw at 4x and downsample (anti-aliased edges)
_NOISE_STD = 6.0  # pixel noise, in 0..255 units
_COLOR_JITTER = 12  # +- per channel on shape / background colour


@dataclass
class Sample:
    image: Image.Image  # RGB, image_size x image_size
    caption: str
    color: str
    shape: str
    size: str
    background: str


def labels() -> list[str]:
    """All class names, colour-major: "red circle", "red square", ..."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def prompt(label: str) -> str:
    """Zero-shot prompt for a class name: "red circle" -> "a photo of a red circle"."""
    return f"a photo of a {label}"


def label_of(sample: Sample) -> str:
    return f"{sample.color} {sample.shape}"


def caption_of(color: str, shape: str, size: str, background: str) -> str:
    return f"a {size} {color} {shape} on a {background} background"


def questions(s: Sample, rng: np.random.Generator) -> list[tuple[str, str]]:
    """The (question, one-word answer) pairs the vqa-shapes fixture answers about one sample: its
    colour, shape, size, background, and two yes/no questions (the second names a near miss half of
    the time: the sample's colour with another shape, or its shape in another colour)."""
    other = [(c, sh) for c in COLORS for sh in SHAPES if (c, sh) != (s.color, s.shape)]
    c, sh = other[int(rng.integers(len(other)))]
    if rng.random() < 0.5:
        c, sh = (s.color, sh) if rng.random() < 0.5 else (c, s.shape)
        if (c, sh) == (s.color, s.shape):
            c = next(x for x in COLORS if x != s.color)
    return [
        ("what color is the shape?", s.color),
        ("which shape is in the picture?", s.shape),
        ("is the shape small or large?", s.size),
        ("what color is the background?", s.background),
        (f"is there a {s.color} {s.shape}?", "yes"),
        (f"is there a {c} {sh}?", "no"),
    ]


def _polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)
    ]


def _shape_points(shape: str, cx: float, cy: float, r: float, rot: float):
    """Outline of a shape of "radius" r (centre to farthest point) as polygon points."""
    if shape == "square":
        return _polygon(cx, cy, r, 4, rot + math.pi / 4)
    if shape == "triangle":
        # centroid-centred equilateral triangle, pointing up; shifted down a bit so it
        # looks centred in its bounding box
        return _polygon(cx, cy + 0.18 * r, 1.15 * r, 3, rot - math.pi / 2)
    if shape == "hexagon":
        return _polygon(cx, cy, r, 6, rot)
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.42 * r
            a = rot - math.pi / 2 + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.36 * r  # half-width of the arms
        base = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    raise ValueError(f"unknown shape {shape!r}")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    d = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + d, 0, 255))


def _render(
    color: str, shape: str, size: str, background: str, image_size: int, rng: np.random.Generator
) -> Image.Image:
    s = image_size
    if size == "small":
        r = rng.uniform(0.21, 0.26) * s
    else:
        r = rng.uniform(0.33, 0.41) * s
    margin = r + 0.04 * s
    cx = rng.uniform(margin, s - margin)
    cy = rng.uniform(margin, s - margin)
    # small rotation only: a square stays a square, not a diamond
    rot = math.radians(rng.uniform(-12.0, 12.0))
    fg = _jitter(_COLOR_RGB[color], rng)
    bg = _jitter(_BACKGROUND_RGB[background], rng)

    k = _SUPERSAMPLE
    big = Image.new("RGB", (s * k, s * k), bg)
    draw = ImageDraw.Draw(big)
    if shape == "circle":
        draw.ellipse([(cx - r) * k, (cy - r) * k, (cx + r) * k, (cy + r) * k], fill=fg)
    else:
        draw.polygon([(x * k, y * k) for x, y in _shape_points(shape, cx, cy, r, rot)], fill=fg)
    img = big.resize((s, s), Image.Resampling.BOX)

    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, _NOISE_STD, size=arr.shape)
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _sample(seed: int, index: int, image_size: int) -> Sample:
    rng = np.random.default_rng([seed, index])
    color = COLORS[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    bgs = [b for b in BACKGROUNDS if b != color]
    background = bgs[int(rng.integers(len(bgs)))]
    image = _render(color, shape, size, background, image_size, rng)
    return Sample(image, caption_of(color, shape, size, background), color, shape, size, background)


def generate(split: str, n: int | None = None, image_size: int = 64) -> list[Sample]:
    """The first ``n`` samples of a fixed split ("train" / "val" / "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if n is None:
        n = DEFAULT_N[split]
    if n < 0:
        raise ValueError("n must be >= 0")
    seed = SPLITS[split]
    return [_sample(seed, i, image_size) for i in range(n)]


def write_split(out_dir: str | Path, split: str, n: int | None = None, image_size: int = 64) -> Path:
    """Write a split as an image folder and return the folder.

    ``out_dir/{split}_{i:05d}.png`` plus ``captions.tsv`` (filename <TAB> caption) and
    ``labels.tsv`` (filename <TAB> class name such as "red circle"), one line per image
    in sample order, and ``questions.tsv`` (filename <TAB> question <TAB> answer, six per image).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = generate(split, n, image_size)
    cap_lines, lab_lines, qa_lines = [], [], []
    rng = np.random.default_rng(7)  # the same questions as the in-memory set
    for i, smp in enumerate(samples):
        name = f"{split}_{i:05d}.png"
        smp.image.save(out / name, format="PNG")
        cap_lines.append(f"{name}\t{smp.caption}\n")
        lab_lines.append(f"{name}\t{label_of(smp)}\n")
        qa_lines += [f"{name}\t{q}\t{a}\n" for q, a in questions(smp, rng)]
    (out / "captions.tsv").write_text("".join(cap_lines), encoding="utf-8")
    (out / "labels.tsv").write_text("".join(lab_lines), encoding="utf-8")
    (out / "questions.tsv").write_text("".join(qa_lines), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a split of the coloured-shapes data set.")
    ap.add_argument("split", choices=sorted(SPLITS))
    ap.add_argument("out_dir")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=64)
    a = ap.parse_args(argv)
    print(write_split(a.out_dir, a.split, a.n, a.image_size))


if __name__ == "__main__":
    main()
