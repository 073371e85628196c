"""Image-processor settings read with transformers itself, written out explicitly for the runtime.

Checkpoints carry `preprocessor_config.json`, or (transformers 5 `Processor.save_pretrained`)
a `processor_config.json` with the image processor nested under "image_processor". Either way
the class named there is built with transformers and every setting the numpy runtime applies
is written explicitly, so no per-class default (a CLIP-style center crop a SigLIP processor
does not have, EfficientNet's rescale offset) is guessed on the device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..runtimes.preprocess import SETTINGS as RUNTIME_KEYS


def raw_image_processor(folder: Path) -> dict[str, Any]:
    """The image processor's dict from either file layout; {} when the folder has none."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
        if key is not None:
            cfg = cfg.get(key) if isinstance(cfg, dict) else None
            if cfg is None:
                continue
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path}: the image processor settings are not a JSON object")
        return cfg
    return {}


def _plain(v: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(v):  # transformers 5's SizeDict
        v = dataclasses.asdict(v)
    if hasattr(v, "items"):
        return {k: int(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    if hasattr(v, "value") and not isinstance(v, (bool, int, float)):  # an enum (resample)
        return int(v.value)
    return v


def explicit_image_processor(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Build the named image processor with transformers and return every runtime setting explicitly.
    Without transformers or a known class, the dict is returned as saved."""
    try:
        import transformers
    except ImportError:
        return dict(raw)
    name = raw.get("image_processor_type")
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_dict"):
        return dict(raw)
    try:
        proc = cls.from_dict(dict(raw))
    except Exception as exc:  # noqa: BLE001 - transformers validates with many kinds
        raise CheckpointError(f"{where}: cannot read its {name} settings: {str(exc).splitlines()[0]}") from None
    out: dict[str, Any] = {"image_processor_type": name}
    for key in RUNTIME_KEYS:
        v = getattr(proc, key, None)
        if key == "do_center_crop" and v is None:
            v = False  # the class has no crop step
        if v is not None:
            out[key] = _plain(v)
    offset, top = bool(getattr(proc, "rescale_offset", False)), bool(getattr(proc, "include_top", False))
    if offset or top:
        # EfficientNet: y = x * f - 1 (offset), then (y - m) / s, then / s again (include_top).
        # Folded into the runtime's one affine step (x * r - mean) / std, per channel.
        r = float(out.get("rescale_factor", 1 / 255)) if out.get("do_rescale", True) else 1.0
        m0, s0 = out.get("image_mean", [0.0] * 3), out.get("image_std", [1.0] * 3)
        mu, sigma = [1.0 if offset else 0.0] * 3, [1.0] * 3
        if out.get("do_normalize"):
            mu = [u + m * g for u, m, g in zip(mu, m0, sigma)]
            sigma = [g * x for g, x in zip(sigma, s0)]
        if top:
            sigma = [g * x for g, x in zip(sigma, s0)]
        out.update(do_rescale=True, rescale_factor=r, do_normalize=True, image_mean=mu, image_std=sigma)
    return out
