"""A recipe, the job it builds and what it returns; every recipe registers here by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .config import Backend, Precision, QuantConfig

if TYPE_CHECKING:
    from ...runtimes.bundle import BundleWriter

Feeds = dict[str, np.ndarray]


class Fidelity(Protocol):
    """Parity of a built graph against the fp32 one on the held-out feeds (cosines, ...)."""

    def __call__(self, path: Path, runtime: dict | None = None, backend: str = "onnxruntime") -> dict[str, Any]: ...


@dataclass(kw_only=True)
class Job:
    """One component of one bundle, being quantized: what a recipe's build gets."""

    src: Path  # the fp32 ONNX (staged)
    w: BundleWriter
    component: str
    cfg: QuantConfig
    calib: list[Feeds] | None
    workdir: Path
    fidelity: Fidelity
    gate_at: float  # the cosine its gate asks for (a recipe that chooses between builds reads it)
    log: Callable[[str], None]


@dataclass(kw_only=True)
class Built:
    files: list[str]  # bundle-relative, the graph first
    runtime: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None  # set when the build measured it (accuracy-aware search)
    tensorrt: bool = False  # a Q/DQ ONNX for `mmdeploy build` on the GPU, not a variant that runs here
    # a build to ship instead when the whole variant fails its greedy-token gate (generative families)
    fallback: Callable[[Job], Built] | None = None


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    precision: Precision
    backend: Backend
    calibration: bool  # needs --calib
    exclusions: bool  # honours --exclude (and records calibration / exclusions in the artifact)
    build: Callable[[Job], Built]
    summary: str


def described(recipe: dict[str, Any]) -> str:
    """A build in a few words (for logs and `recipe.replaced`): its mode, and its float ops' precision
    where a recipe set one."""
    ops = recipe.get("float_ops")
    return f"{recipe.get('mode')}" + (f" (float ops {ops.split()[0]})" if ops else "")


RECIPES: dict[str, Recipe] = {}  # filled by the recipe modules as the package imports them


def register(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} registered twice")
    RECIPES[recipe.name] = recipe
    return recipe
