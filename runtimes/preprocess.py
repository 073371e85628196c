"""CLIP-style image preprocessing in numpy + pillow, matching transformers' CLIPImageProcessor.

Reference: transformers 5 ``CLIPImageProcessorPil`` (``PilBackend``), which is what
``CLIPImageProcessor`` / ``AutoImageProcessor`` / ``CLIPProcessor`` give when torchvision
is not installed. With torchvision installed, transformers 5 picks the torchvision backend
(tensor resize), whose pixels can differ from PIL's by a rounding step.

Steps, in HF's order and arithmetic:

1. to RGB (``runtimes.images.load_image``: white-composited alpha, EXIF orientation);
2. resize with PIL (``resample``, default BICUBIC): ``shortest_edge`` keeps aspect with the
   long side ``int(size * long / short)`` (truncation, not rounding); ``height``/``width``
   is exact; ``shortest_edge`` + ``longest_edge`` follows ``get_size_with_aspect_ratio``;
3. center crop: offsets ``(H - h) // 2``, ``(W - w) // 2``; zero padding (``ceil`` on the
   top/left) where the image is smaller than the crop;
4. rescale: ``uint8 -> float64 * rescale_factor -> float32``;
5. normalize in float32: ``(x - mean) / std``.

When the resized image would be huge (a 40000 x 10 strip resized to a 224 shortest edge)
only the crop window is resampled, through PIL's ``box`` argument; this gives the same
pixels up to rare 1-level rounding flips, and keeps memory bounded.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmdeploy.errors import BundleError, InputError
from mmdeploy.runtimes.images import DEFAULT_MAX_PIXELS, load_image

__all__ = ["ImagePreprocessor", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Resample the crop window only when the full resized image would exceed this many pixels.
_FULL_RESIZE_LIMIT = 16_000_000

_SIZE_KEYS = ("height", "width", "shortest_edge", "longest_edge")

# The processor settings this runtime applies: what the exporter writes out explicitly
# (exporter/processor.py) and what from_config reads back.
SETTINGS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


@dataclass
class ImagePreprocessor:
    """Images -> ``pixel_values`` float32 (N, 3, H, W), as CLIPImageProcessor does it.

    Images are always converted to RGB (the vision graphs take 3 channels);
    ``do_convert_rgb`` is kept only so the config round-trips. ``max_pixels`` bounds each
    input image (``InputError`` above it); ``None`` lifts the limit.
    """

    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    resample: int = int(Image.Resampling.BICUBIC)
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        self.size = _size_dict(self.size, default_to_square=False, name="size")
        self.crop_size = _size_dict(self.crop_size, default_to_square=True, name="crop_size")
        if self.do_center_crop and not {"height", "width"} <= self.crop_size.keys():
            raise ValueError(f"crop_size needs height and width, got {self.crop_size}")
        try:
            self.resample = int(Image.Resampling(int(self.resample)))
        except ValueError:
            raise ValueError(f"unknown PIL resample code {self.resample!r}") from None
        try:
            self.rescale_factor = float(self.rescale_factor)
        except (TypeError, ValueError):
            raise ValueError(f"rescale_factor must be a number, got {self.rescale_factor!r}") from None
        self.image_mean = _triple(self.image_mean, "image_mean")
        self.image_std = _triple(self.image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise ValueError("image_std must not contain 0")
        # float32 constants exactly as transformers' normalize builds them.
        self._mean = np.array(self.image_mean, dtype=np.float32)
        self._std = np.array(self.image_std, dtype=np.float32)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], *, max_pixels: int | None = DEFAULT_MAX_PIXELS, source: str = "preprocess config"
    ) -> ImagePreprocessor:
        """Build from a ``preprocessor_config.json`` dict; missing keys take CLIP's defaults.
        A bad value is a BundleError that starts with ``source`` (the file or manifest field)."""
        if not isinstance(cfg, dict):
            raise BundleError(f"{source}: must be a JSON object, got {type(cfg).__name__}")
        cfg = dict(cfg)
        kwargs: dict[str, Any] = {"max_pixels": max_pixels}
        default_to_square = bool(cfg.get("default_to_square", False))
        size = cfg.get("size")
        if size is not None:
            if isinstance(size, int) and default_to_square:
                size = {"height": size, "width": size}
            if cfg.get("use_square_size") and isinstance(size, dict) and "shortest_edge" in size:
                size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
            kwargs["size"] = size
        for key in SETTINGS:
            if key != "size" and cfg.get(key) is not None:  # size: normalised above
                kwargs[key] = cfg[key]
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{source}: {' '.join(str(exc).split())}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kw: Any) -> ImagePreprocessor:
        """Build from a ``preprocessor_config.json`` file."""
        with open(path, encoding="utf-8") as f:
            return cls.from_config(json.load(f), **{"source": str(path), **kw})

    def to_config(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` keys (round-trips through :meth:`from_config`)."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_convert_rgb": self.do_convert_rgb,
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": dict(self.crop_size),
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(H, W) of every output image, or None when it depends on the input."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if self.do_resize and "shortest_edge" not in self.size:
            return self.size["height"], self.size["width"]
        return None

    # -- processing ------------------------------------------------------------------------

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        """Images (anything ``load_image`` takes, or an (N, H, W, C) uint8 array) -> float32 (N, 3, H, W)."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if isinstance(images, (str, bytes, Image.Image, np.ndarray)) or not isinstance(images, Sequence):
            raise InputError("images must be a list of images (paths, bytes, PIL images or arrays)")
        if len(images) == 0:
            raise InputError("no images given")
        arrays = [self.process_one(im) for im in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise InputError(
                f"images came out in different sizes {sorted(shapes)}: this preprocessing has no "
                "center crop or fixed size, so send them one at a time"
            )
        return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))

    def process_one(self, image: Any) -> np.ndarray:
        """One image -> float32 (H, W, 3) array (channels last)."""
        im = load_image(image, max_pixels=self.max_pixels)
        arr = self._resize_and_crop(im)
        if self.do_rescale:
            x = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = arr.astype(np.float32)
        if self.do_normalize:
            x = (x - self._mean) / self._std
        return x

    def _resize_and_crop(self, im: Image.Image) -> np.ndarray:
        w, h = im.size
        if self.do_resize:
            nh, nw = self._resized_hw(h, w)
        else:
            nh, nw = h, w
        if self.do_center_crop:
            ch, cw = self.crop_size["height"], self.crop_size["width"]
            top, left = (nh - ch) // 2, (nw - cw) // 2
            inside = top >= 0 and left >= 0 and top + ch <= nh and left + cw <= nw
            if self.do_resize and inside and nh * nw > _FULL_RESIZE_LIMIT:
                sx, sy = w / nw, h / nh
                box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
                return np.asarray(im.resize((cw, ch), resample=self.resample, box=box))
        if self.do_resize:
            im = im.resize((nw, nh), resample=self.resample)
        arr = np.asarray(im)
        if self.do_center_crop:
            arr = _center_crop(arr, ch, cw)
        return arr

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        s = self.size
        if "shortest_edge" in s and "longest_edge" in s:
            return _size_with_aspect_ratio(h, w, s["shortest_edge"], s["longest_edge"])
        if "shortest_edge" in s:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s["shortest_edge"], int(s["shortest_edge"] * long / short)
            return (new_long, new_short) if w <= h else (new_short, new_long)
        return s["height"], s["width"]


# -- helpers (mirroring transformers.image_transforms) ----------------------------------------


def _center_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    h, w = arr.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
        return arr[top : top + ch, left : left + cw]
    nh, nw = max(ch, h), max(cw, w)
    padded = np.zeros((nh, nw) + arr.shape[2:], dtype=arr.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    padded[tp : tp + h, lp : lp + w] = arr
    top, left = top + tp, left + lp
    return padded[max(0, top) : min(nh, top + ch), max(0, left) : min(nw, left + cw)]


def _size_with_aspect_ratio(h: int, w: int, size: int, max_size: int) -> tuple[int, int]:
    raw_size = None
    lo, hi = float(min(h, w)), float(max(h, w))
    if hi / lo * size > max_size:
        raw_size = max_size * lo / hi
        size = int(round(raw_size))
    if (h <= w and h == size) or (w <= h and w == size):
        return h, w
    if w < h:
        return (int(raw_size * h / w) if raw_size is not None else int(size * h / w)), size
    return size, (int(raw_size * w / h) if raw_size is not None else int(size * w / h))


MAX_SIDE = (
    16384  # a resize or crop target past this is a hand-edited config, not a model (100000^2 x 3 floats = 112 GB)
)


def _size_dict(size: Any, *, default_to_square: bool, name: str) -> dict[str, int]:
    out = _size_dict_unbounded(size, default_to_square=default_to_square, name=name)
    if any(v > MAX_SIDE for v in out.values()):
        raise ValueError(f"{name} values must be at most {MAX_SIDE}, got {size}")
    return out


def _size_dict_unbounded(size: Any, *, default_to_square: bool, name: str) -> dict[str, int]:
    if isinstance(size, bool):
        raise ValueError(f"{name} must be an int, a pair or a dict, got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"{name} must be positive, got {size}")
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    try:
        if isinstance(size, (list, tuple)) and len(size) == 2:
            size = {"height": int(size[0]), "width": int(size[1])}
        if isinstance(size, dict):
            out = {k: int(v) for k, v in size.items() if k in _SIZE_KEYS and v is not None}
    except (TypeError, ValueError):
        raise ValueError(f"{name} values must be integers, got {size!r}") from None
    if isinstance(size, dict):
        if ("height" in out) != ("width" in out):
            raise ValueError(f"{name} needs both height and width, got {size}")
        if not out or ("longest_edge" in out and "shortest_edge" not in out):
            raise ValueError(f"{name} must have height/width or shortest_edge, got {size}")
        if any(v <= 0 for v in out.values()):
            raise ValueError(f"{name} values must be positive, got {size}")
        return out
    raise ValueError(f"{name} must be an int, a pair or a dict, got {size!r}")


def _triple(v: Any, name: str) -> tuple[float, ...]:
    if isinstance(v, (int, float)):
        return (float(v),) * 3
    try:
        vals = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or 3 numbers (RGB), got {v!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 values (RGB), got {len(vals)}")
    return vals
