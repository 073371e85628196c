"""Request input parsing that runs on the event loop: cheap checks only (decoding happens in
the decode pool). Images arrive as data URLs, bare base64 or (opt-in) local paths."""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Any

from ..tokenize import bad_unicode_at
from .config import IMAGE_SUFFIXES, ServeConfig
from .errors import ApiError, json_type


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
        return head[6:10] == b"\x00\x00\x00\x00" and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
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


def _local_path(s: str, allow: bool, where: str) -> ImageRef | None:
    if s[:7].lower() == "file://":
        if not allow:
            raise ApiError(400, f"{where}: local paths are disabled on this server (start it with --allow-local-paths)",
                           code="local_paths_disabled", param=where)
        return ImageRef("path", s[7:])
    if allow and os.path.isabs(s) and s.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(s):
        return ImageRef("path", s)
    return None


def image_field(value: Any, where: str, allow_local_paths: bool) -> ImageRef:
    """A field that must be an image: data URL, base64 or (opt-in) a local path."""
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a string (a data URL or base64), got {json_type(value)}",
                       code="invalid_type", param=where)
    s = value.strip()
    if not s:
        raise ApiError(400, f"{where} is empty", code="invalid_image", param=where)
    if s[:5].lower() == "data:":
        return ImageRef("data", s)
    if s[:7].lower() in ("http://", "https:/"):
        raise ApiError(400, f"{where}: this server does not fetch URLs; send the image as a data URL or base64",
                       code="invalid_image", param=where)
    ref = _local_path(s, allow_local_paths, where)
    if ref is not None:
        return ref
    if allow_local_paths and not looks_like_base64_image(s) and ("/" in s or os.sep in s or s.lower().endswith(IMAGE_SUFFIXES)):
        return ImageRef("path", s)  # load_image says "image file not found" when it is not there
    return ImageRef("data", s)


def classify_input(s: str, allow_local_paths: bool, where: str) -> ImageRef | None:
    """An embeddings input: an ImageRef for an image, None for text."""
    if s[:5].lower() == "data:":
        return ImageRef("data", s.strip())
    ref = _local_path(s, allow_local_paths, where)
    if ref is not None:
        return ref
    if looks_like_base64_image(s):
        return ImageRef("data", s.strip())
    return None


def check_text(s: str, where: str) -> None:
    """Text the tokenizer can take, checked before it joins a batch: JSON allows lone surrogates."""
    if (at := bad_unicode_at(s)) is not None:
        raise ApiError(400, f"{where} is not valid Unicode text (a lone surrogate at character {at})",
                       code="invalid_text", param=where)


def opt_int(body: dict, key: str, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ApiError(400, f"{key} must be an integer, got {json_type(v)}", code="invalid_type", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {v}", code="invalid_value", param=key)
    return v


def images_of(body: dict, cfg: ServeConfig) -> list[ImageRef]:
    has_one, has_many = body.get("image") is not None, body.get("images") is not None
    if has_one == has_many:
        raise ApiError(400, "give either 'image' (one image) or 'images' (a list)", code="missing_image", param="image")
    if has_one:
        return [image_field(body["image"], "image", cfg.allow_local_paths)]
    imgs = body["images"]
    if isinstance(imgs, str):
        imgs = [imgs]
    if not isinstance(imgs, list):
        raise ApiError(400, f"images must be a list of strings, got {json_type(imgs)}", code="invalid_type", param="images")
    if not imgs:
        raise ApiError(400, "images is empty", code="empty_input", param="images")
    if len(imgs) > cfg.max_items:
        raise ApiError(400, f"too many images: {len(imgs)} (this server takes at most {cfg.max_items} per request)",
                       code="too_many_items", param="images")
    return [image_field(v, f"images[{i}]", cfg.allow_local_paths) for i, v in enumerate(imgs)]
