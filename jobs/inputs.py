"""What a job reads: image files found by globs or folders, or the lines of text files."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import InputError

# decided by name: a photo library holds sidecars (.xmp, .json, .DS_Store) that are not broken images
IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .webp .avif .tif .tiff .ppm .pgm .pbm .pnm .ico .tga".split()
)
MAX_TEXT_CHARS = 20_000  # a line longer than this is a broken item, not a tokenizer's problem


def find_images(patterns: Sequence[str]) -> tuple[list[str], int]:
    """Sorted, de-duplicated image paths matched by globs (``**`` recurses) or folders (walked
    whole), and how many matched files were skipped for not having an image suffix."""
    found: set[str] = set()
    skipped = 0
    for pat in patterns:
        if not pat or not pat.strip():
            raise InputError("--images: empty pattern")
        p = os.path.expanduser(pat)
        if os.path.isdir(p):
            names: Iterable[str] = (os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs)
        elif glob.has_magic(p):
            names = glob.iglob(p, recursive=True)
        elif os.path.isfile(p):
            names = [p]
        else:
            raise InputError(f"--images {pat}: no such file or folder, and not a glob pattern")
        for name in names:
            if not os.path.isfile(name):
                continue
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.add(os.path.normpath(name))
            else:
                skipped += 1
    if not found:
        hint = f" ({skipped} files without an image suffix skipped)" if skipped else ""
        raise InputError(f"--images {' '.join(patterns)}: matched no image files{hint}")
    return sorted(found), skipped


def read_texts(files: Sequence[str]) -> list[str]:
    """The lines of UTF-8 text files, in order; blank lines are kept (they become broken items,
    so line numbers stay meaningful)."""
    out: list[str] = []
    for f in files:
        p = Path(os.path.expanduser(f))
        if not p.is_file():
            raise InputError(f"--texts {f}: no such file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"--texts {f}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise InputError(f"--texts {f}: cannot read: {exc.strerror}") from None
        out += text.splitlines()
    if not out:
        raise InputError(f"--texts {' '.join(files)}: no lines")
    return out


def fingerprint(items: Sequence[str]) -> str:
    """sha256 of the ordered input list: a resumed job must cover the same inputs in the same order."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()
