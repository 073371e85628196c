"""Image loading for the device side: any reasonable input -> one 8-bit RGB PIL image.

Only numpy and pillow: this module runs in a device app that has no torch.

Colour handling mirrors transformers' ``convert_to_rgb`` (``do_convert_rgb=True``), which
composites any transparency (an ``A`` band, or a ``transparency`` entry as in palette
PNGs) onto a white background and otherwise calls ``Image.convert("RGB")``. On top of that:

- EXIF orientation is applied (``ImageOps.exif_transpose``), as a photo viewer would; the
  HF processor does not do this itself, so feed it the transposed image when comparing.
- High bit depth is scaled to 8 bits rather than clipped: 16-bit (``I;16*``) >> 8; 32-bit
  integer ``I`` kept as is when it fits 0..255, >> 8 when it fits 0..65535, else min-max
  stretched; float ``F`` times 255 when it lies in [0, 1], kept when in [0, 255], else
  min-max stretched.
- Pixel count is limited (``max_pixels``), checked from the header before decoding.
- Only common raster formats are decoded (``ALLOWED_FORMATS``): no EPS/PDF (Ghostscript)
  or other exotic plugins for untrusted bytes.

Every failure a user can cause raises :class:`mmdeploy.errors.InputError` with a one-line
message naming the file (or the bytes / base64 string).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmdeploy.errors import InputError, one_line

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "decode_image_data",
    "load_image",
    "to_rgb",
]

DEFAULT_MAX_PIXELS = 40_000_000
# Decoders tried on untrusted input (JPEG covers MPO; names missing from this Pillow are skipped).
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "DIB", "WEBP", "AVIF", "TIFF", "PPM", "ICO", "TGA")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def load_image(src: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return ``src`` as an 8-bit ``RGB`` PIL image, EXIF orientation applied.

    ``src``: a path (``str`` / ``PathLike``; a ``str`` starting with ``data:`` is read as a
    data URL), encoded image bytes, a PIL image, or a numpy array laid out H x W, H x W x 1,
    H x W x 3 or H x W x 4 (RGBA, composited onto white) of uint8 (uint16 is >> 8, bool
    and floats in [0, 1] are scaled to 0..255). ``max_pixels=None`` disables the limit.
    """
    if isinstance(src, Image.Image):
        _check_pixels(src.size, "image", max_pixels)
        try:
            src.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(f"cannot read image (corrupt or truncated): {one_line(exc)}") from None
        return to_rgb(_exif_transpose(src), "image")
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        return _decode(io.BytesIO(data), f"image bytes ({len(data)} bytes)", max_pixels)
    if isinstance(src, str) and src.startswith("data:"):
        return decode_image_data(src, max_pixels=max_pixels)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = f"image file {path}"
        try:
            fp = open(path, "rb")
        except FileNotFoundError:
            raise InputError(f"image file not found: {path}") from None
        except IsADirectoryError:
            raise InputError(f"image path is a directory, not a file: {path}") from None
        except OSError as exc:
            raise InputError(f"cannot open image file {path}: {exc.strerror or exc}") from None
        with fp:
            return _decode(fp, name, max_pixels)
    raise InputError(
        f"unsupported image input of type {type(src).__name__}: give a path, bytes, a PIL image or an HxWx3 uint8 array"
    )


def decode_image_data(s: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a ``data:image/...;base64,...`` URL or a bare base64 string to an RGB image."""
    if not isinstance(s, str):
        raise InputError(f"image data must be a base64 string or data URL, got {type(s).__name__}")
    text = s.strip()
    what = "image data"
    if text[:5].lower() == "data:":
        what = "image data URL"
        header, comma, text = text[5:].partition(",")
        if not comma:
            raise InputError("malformed image data URL: no ',' before the payload")
        params = [p.strip().lower() for p in header.split(";")]
        media_type = params[0]
        if media_type and not media_type.startswith("image/"):
            raise InputError(f"image data URL has media type {media_type!r}, expected image/*")
        if "base64" not in params[1:]:
            raise InputError("image data URL must be base64-encoded (';base64,')")
    payload = "".join(text.split())
    if not payload:
        raise InputError(f"empty {what}")
    try:
        if "-" in payload or "_" in payload:
            data = base64.b64decode(payload.replace("-", "+").replace("_", "/"), validate=True)
        else:
            data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"invalid base64 in {what} ({len(payload)} chars): {exc}") from None
    return _decode(io.BytesIO(data), f"{what} ({len(data)} bytes decoded)", max_pixels)


def to_rgb(im: Image.Image, name: str = "image") -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (see the module notes)."""
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        im = _high_depth_to_l(im)
    if im.mode == "RGB" and im.info.get("transparency") is None:
        return im
    try:
        # Same test and compositing as transformers.image_transforms.convert_to_rgb.
        if "A" in im.getbands() or im.info.get("transparency") is not None:
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot convert {name} (mode {im.mode}) to RGB: {exc}") from None


# -- internals -----------------------------------------------------------------------------


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"empty image: {name} is {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(f"image too large: {name} is {w}x{h} = {w * h:,} pixels, the limit is {max_pixels:,}")


def _formats() -> list[str]:
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


def _decode(fp, name: str, max_pixels: int | None) -> Image.Image:
    # our own max_pixels is the limit (checked from the header below); PIL's bomb warning would only
    # print lines to stderr for an image we accept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode_quiet(fp, name, max_pixels)


def _decode_quiet(fp, name: str, max_pixels: int | None) -> Image.Image:
    try:
        im = Image.open(fp, formats=_formats())
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large: {name}: {exc}") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read {name}: not a supported image format ({', '.join(_formats())})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read {name}: {one_line(exc)}") from None
    with im:
        _check_pixels(im.size, name, max_pixels)
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise InputError(f"image too large: {name}: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise InputError(f"cannot read {name} (corrupt or truncated): {one_line(exc)}") from None
        out = to_rgb(_exif_transpose(im), name)
        if out is im:
            out = im.copy()
    return out


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():  # a corrupt EXIF block warns through PIL; the picture is still fine
            warnings.simplefilter("ignore")
            if im.getexif().get(0x0112, 1) in (1, None):  # no rotation: skip exif_transpose's copy
                return im
            return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        return im


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    arr = np.asarray(im)
    if im.mode in _SIXTEEN_BIT:
        out = (arr.astype(np.uint16) >> 8).astype(np.uint8)
    elif im.mode == "I":
        out = _int_to_u8(arr.astype(np.int64))
    else:  # "F"
        out = _float_to_u8(arr.astype(np.float64))
    return Image.fromarray(out)


def _int_to_u8(a: np.ndarray) -> np.ndarray:
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return (a >> 8).astype(np.uint8)
    return _stretch(a.astype(np.float64), lo, hi)


def _float_to_u8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return np.round(a * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.round(a).astype(np.uint8)
    return _stretch(a, lo, hi)


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _from_array(arr: np.ndarray, max_pixels: int | None) -> Image.Image:
    shape = arr.shape
    if arr.ndim == 3 and shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InputError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {shape}")
    _check_pixels((arr.shape[1], arr.shape[0]), f"image array {shape}", max_pixels)
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        a = np.asarray(arr, np.float64)
        if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
            raise InputError(f"float image array must hold values in [0, 1], dtype {arr.dtype}")
        arr = np.round(a * 255.0).astype(np.uint8)
    else:
        raise InputError(f"image array must be uint8 (or uint16, bool, float in [0, 1]), got {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        # Same arithmetic as transformers' numpy convert_to_rgb, so an RGBA array gives the
        # same pixels here as in CLIPImageProcessor.
        alpha = arr[..., 3:4] / 255
        arr = np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr).convert("RGB")
    return Image.fromarray(arr)
