"""Real photos (scikit-image's sample data, shipped in its wheel) and real captions.

Used for export parity and as the default benchmark data: real inputs, not noise,
because activation statistics (and so quantization error) differ on real images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from ...errors import require

PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
)
# other real images in the same wheel: the calibration split, so INT8 is judged on photos it never saw
CALIBRATION_NAMES = (
    "retina",
    "stereo_motorcycle",
    "grass",
    "gravel",
    "brick",
    "clock",
    "moon",
    "colorwheel",
    "page",
    "text",
    "microaneurysms",
    "horse",
)

CAPTIONS = (
    "an astronaut in a white spacesuit standing in front of a flag",
    "a ginger cat lying down and looking at the camera",
    "a cup of coffee on a saucer",
    "a rocket on the launch pad",
    "a man with a camera on a tripod",
    "a photo of a dog",
    "a black and white photo of old coins",
    "galaxies in deep space",
    "a microscope image of stained tissue",
    "two people riding bicycles along a beach at sunset while a dog runs beside them",
    "a red car",
    "A close-up photograph of a bowl of fresh strawberries, blueberries and raspberries on a wooden table in soft morning light.",
)


@lru_cache(maxsize=2)
def photos(split: str = "test") -> tuple[Image.Image, ...]:
    data = require("skimage.data", "export")
    out = []
    for name in PHOTO_NAMES if split != "train" else CALIBRATION_NAMES:
        arr = getattr(data, name)()
        arr = np.asarray(arr[0] if isinstance(arr, tuple) else arr)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out.append(Image.fromarray(arr).convert("RGB"))
    return tuple(out)


def photo_batch(n: int) -> list[Image.Image]:
    p = photos()
    return [p[i % len(p)] for i in range(n)]


def caption_batch(n: int) -> list[str]:
    return [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
