"""A photo-library-like corpus of shapes images for batch-job tests and benchmarks: nested
folders, mixed formats (PNG, JPEG, WebP, BMP, GIF, TIFF), a few broken files and sidecars."""

from __future__ import annotations

from pathlib import Path

from .shapes import generate

FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("bmp", "BMP"), ("gif", "GIF"), ("tif", "TIFF"))


def write_corpus(
    out_dir: str | Path, n: int, broken_every: int = 97, image_size: int = 64, split: str = "test"
) -> dict[str, str]:
    """Write ``n`` files under ``out_dir`` (every ``broken_every``-th one broken: truncated,
    empty or not an image) plus a sidecar .json per 50 images. -> {path: caption} of the good ones."""
    out = Path(out_dir)
    samples = generate(split, n, image_size)
    good: dict[str, str] = {}
    for i, smp in enumerate(samples):
        ext, fmt = FORMATS[i % len(FORMATS)]
        folder = out / f"album-{i % 7}" / f"{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img-{i:05d}.{ext}"
        if broken_every and i % broken_every == broken_every - 1:
            kind = (i // broken_every) % 3
            if kind == 0:  # truncated mid-file
                smp.image.save(path, format=fmt)
                path.write_bytes(path.read_bytes()[: max(8, path.stat().st_size // 3)])
            elif kind == 1:
                path.write_bytes(b"")
            else:
                path.write_text("not an image\n")
            continue
        smp.image.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        good[str(path)] = smp.caption
        if i % 50 == 0:
            (folder / f"img-{i:05d}.json").write_text('{"sidecar": true}')
    return good
