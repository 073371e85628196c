"""models.yaml: the model registry (no torch here, `mmdeploy models` stays light)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def registry() -> dict[str, dict[str, Any]]:
    text = resources.files("mmdeploy").joinpath("models.yaml").read_text()
    return yaml.safe_load(text)


def entry(name: str) -> dict[str, Any]:
    reg = registry()
    if name not in reg:
        raise CheckpointError(f"unknown model {name!r}: not a folder and not in models.yaml (see `mmdeploy models`)")
    return reg[name]


def package_path(rel: str) -> Path:
    """A path shipped inside the package (fixtures, tokenizers)."""
    return PACKAGE_ROOT / rel
