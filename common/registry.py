"""A registry of classes keyed by an attribute (a family's `family`, a backend's `name`), filled by
importing every module of a package once (the files register themselves with a decorator)."""

from __future__ import annotations

import importlib
import pkgutil


class Registry:
    def __init__(self, package: str, path, key: str = "family"):
        self.package, self.path, self.key = package, path, key
        self._classes: dict[str, type] = {}
        self._discovered = False

    def register(self, cls: type) -> type:
        """Class decorator: registers `cls` under its `key` attribute (`cls.family` by default)."""
        self._classes[getattr(cls, self.key)] = cls
        return cls

    def all(self) -> dict[str, type]:
        # a flag, not "is the table empty": importing one family module directly registers that
        # family (and what it imports) alone, and the others were then never found
        if not self._discovered:
            for info in pkgutil.iter_modules(self.path):
                importlib.import_module(f"{self.package}.{info.name}")
            self._discovered = True
        return dict(self._classes)
