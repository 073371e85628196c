"""Inference backends by name: one module per backend (ONNX Runtime, OpenVINO, TensorRT), each a
`Backend` class (base.py) registered with `@register`, its SDK imported lazily.

Callers ask `get_backend(name)` for the instance and its declared `capabilities`; a new backend is a
new module here, found by importing every module of this package once.
"""

from __future__ import annotations

from ...common.registry import Registry
from ...errors import BackendError
from .base import Backend, Capabilities

__all__ = ["Backend", "Capabilities", "backend_names", "get_backend", "register"]

_REGISTRY = Registry(__name__, __path__, key="name")
register = _REGISTRY.register  # class decorator: registers `cls` under `cls.name`
_instances: dict[type, Backend] = {}


def backend_names() -> list[str]:
    """Registered names, sorted: the registry's own order is the order modules happened to be imported."""
    return sorted(_REGISTRY.all())


def get_backend(name: str) -> Backend:
    """The backend registered as `name`; an unknown name is a one-line error listing the known ones."""
    classes = _REGISTRY.all()
    if name not in classes:
        raise BackendError(f"unknown backend {name!r}: choose from {', '.join(backend_names())}")
    cls = classes[name]
    if cls not in _instances:
        _instances[cls] = cls()
    return _instances[cls]
