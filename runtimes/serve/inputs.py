"""Request input parsing that runs on the event loop: cheap checks only (decoding happens in
the decode pool). Images arrive as data URLs, bare base64 or (opt-in) local paths."""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from .config import IMAGE_SUFFIXES
from .errors import FieldError

_B64_HEAD = re.compile(r"[A-Za-z0-9+/_\-]{16,}")


def _image_magic(head: bytes) -> bool:
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return True
    if head[:4] == b"\x00\x00\x01\x00":  # ICO
        return True
    if head[:2] == b"BM" and len(head) >= 18:  # BMP: reserved zeros + a known DIB header size
        return head[6:10] == b"\x00\x00\x00\x00" and int.from_bytes(head[14:18], "little") in (
            12,
            40,
            52,
            56,
            64,
            108,
            124,
        )
    return len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n"


def looks_like_base64_image(s: str) -> bool:
    """True when ``s`` starts like base64 of an image file (checks 24 decoded bytes)."""
    head = s[:40].replace("\r", "").replace("\n", "")[:32]
    if len(head) < 16 or not _B64_HEAD.fullmatch(head):
        return False
    head = head[: len(head) // 4 * 4].replace("-", "+").replace("_", "/")
    try:
        return _image_magic(base64.b64decode(head, validate=True))
    except (binascii.Error, ValueError):
        return False


@dataclass(frozen=True)
class ImageRef:
    """An image as the client sent it: ``kind`` 'data' (data URL or base64) or 'path'."""

    kind: str
    value: str


def _local_path(s: str, allow: bool) -> ImageRef | None:
    if s[:7].lower() == "file://":
        if not allow:
            raise FieldError(
                "local_paths_disabled", "local paths are disabled on this server (start it with --allow-local-paths)"
            )
        return ImageRef("path", s[7:])
    if allow and os.path.isabs(s) and s.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(s):
        return ImageRef("path", s)
    return None


def image_field(value: str, allow_local_paths: bool) -> ImageRef:
    """A field that must be an image: data URL, base64 or (opt-in) a local path."""
    s = value.strip()
    if not s:
        raise FieldError("invalid_image", "is empty")
    if s[:5].lower() == "data:":
        return ImageRef("data", s)
    if s[:7].lower() in ("http://", "https:/"):
        raise FieldError("invalid_image", "this server does not fetch URLs; send the image as a data URL or base64")
    ref = _local_path(s, allow_local_paths)
    if ref is not None:
        return ref
    if (
        allow_local_paths
        and not looks_like_base64_image(s)
        and ("/" in s or os.sep in s or s.lower().endswith(IMAGE_SUFFIXES))
    ):
        return ImageRef("path", s)  # load_image says "image file not found" when it is not there
    return ImageRef("data", s)


def classify_input(s: str, allow_local_paths: bool) -> ImageRef | None:
    """An embeddings input: an ImageRef for an image, None for text."""
    if s[:5].lower() == "data:":
        return ImageRef("data", s.strip())
    ref = _local_path(s, allow_local_paths)
    if ref is not None:
        return ref
    if looks_like_base64_image(s):
        return ImageRef("data", s.strip())
    return None
