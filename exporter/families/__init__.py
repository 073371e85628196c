"""Exporter side of the family contract: one file per family, registered by name and architecture
(the way optimum registers an OnnxConfig per model type).

A family exporter class subclasses base.Family and declares:

    family          name written into the bundle (its runtime pipeline registers the same name)
    architectures   {config.json architecture: (transformers model class, config class)}
    model_types     config.json model_type values that mean this family when no architecture is named
    capabilities    the Capability values of its bundles (as its pipeline's), plus DISTILL / PRUNE
    distiller       its distiller class (exporter/distill.py), or None
    pruner          its pruner class (exporter/prune.py), or None
    create(ckpt)    classmethod -> the exporter for a loaded checkpoint (default: cls(ckpt))

and per component: module, input_names, dynamic_axes, specs, export_feeds, feeds,
manifest_extra, bundle_files (see clip.py for the smallest complete one); output_names,
export_component, parity_cases, write_files and check_variants have defaults in base.py.
Checkpoint resolution, export, bench's PyTorch reference and distill ask this registry; no
code outside a family's files tests a family's name.
"""

from __future__ import annotations

from typing import Any

from ...common.capabilities import Capability
from ...common.registry import Registry
from ...errors import ExportError, UnsupportedModelError

_REGISTRY = Registry(__name__, __path__)
register = _REGISTRY.register  # class decorator: the family's exporter, under `cls.family`
families = _REGISTRY.all


def architectures() -> dict[str, tuple[str, tuple[str, str]]]:
    """architecture -> (family, (model class, config class)) over every registered family."""
    return {arch: (name, classes) for name, cls in families().items() for arch, classes in cls.architectures.items()}


def family_of(config: dict[str, Any], where: str) -> str:
    """config.json -> family name, or an UnsupportedModelError listing what is supported."""
    archs = config.get("architectures") or []
    table = architectures()
    for arch in archs:
        if arch in table:
            return table[arch][0]
    mt = config.get("model_type")
    if not archs:
        for name, cls in families().items():
            if mt in cls.model_types:
                return name
    got = archs[0] if archs else mt
    raise UnsupportedModelError(f"{where}: unsupported architecture {got!r}; supported: {', '.join(sorted(table))}")


def hf_classes(config: dict[str, Any], family: str) -> tuple[str, str]:
    """(model class, config class) names in transformers for this config."""
    cls = families()[family]
    for arch in config.get("architectures") or []:
        if arch in cls.architectures:
            return cls.architectures[arch]
    return cls.default_classes


def family_exporter(ckpt):
    """The family exporter instance for a loaded checkpoint."""
    got = families()
    if ckpt.family not in got:
        raise ExportError(f"family {ckpt.family!r} has no exporter yet")
    cls = got[ckpt.family]
    return cls.create(ckpt)


def families_that(capability: Capability) -> list[str]:
    """The families whose exporter declares ``capability``, sorted (for messages and checks)."""
    return sorted(name for name, cls in families().items() if cls.can(capability))
