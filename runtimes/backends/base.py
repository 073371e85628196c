"""What a backend is: a class that declares what it can do, builds artifacts and opens sessions.

A new backend is one module in this package with one class registered by name:

    @register
    class MyBackend(Backend):
        name = "mybackend"
        extra = "mybackend"                       # the pip extra that installs its SDK
        capabilities = Capabilities(builds=("fp32",), runs=("fp32",), devices=("cpu",))

        def available(self) -> str | None: ...    # None when usable here, else why not (one line)
        def version(self) -> str: ...
        def open(self, path, device=None, threads=None, options=None) -> Session: ...
        def build(self, onnx_path, out_dir, precision, component, **settings) -> BuildResult: ...

Its SDK is imported lazily (inside methods), so `import mmdeploy.runtimes` stays light. The
session it opens subclasses runtimes.session.Session (`run_impl`, optionally `open_decoder`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...errors import BackendError
from ..session import BuildResult, Session


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares; select, export, build and quantize ask this, never the module."""

    builds: tuple[str, ...]  # precisions build() makes from the fp32 ONNX
    runs: tuple[str, ...]  # precisions of artifacts it opens (quantize adds some build() does not make)
    devices: tuple[str, ...]  # what open(device=...) takes; the first is the default
    kv_binding: bool = False  # its decoder binds KV buffers in place (no cache copy per step)
    kv_state: bool = False  # it can make a decoder stateful: the cache lives in the infer request
    kv_precisions: tuple[str, ...] = ("fp32",)  # KV cache element types a stateful decoder can keep
    # precision -> CPU flags (/proc/cpuinfo names), any one of which runs it natively here
    cpu_needs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    device_build: bool = False  # `mmdeploy build` makes its artifacts on the machine that runs them
    plans_tied_to_device: bool = False  # an artifact runs only where it was built (fits() checks)


@dataclass(frozen=True)
class BuildJob:
    """One build() call of `mmdeploy build`: a component at a precision, from an ONNX of the bundle."""

    component: str
    precision: str
    source: str  # the ONNX it builds from, relative to the bundle's root
    settings: Mapping[str, Any] = field(default_factory=dict)  # build()'s keyword settings


class Backend:
    name: ClassVar[str]
    extra: ClassVar[str]  # `pip install 'mmdeploy[<extra>]'` installs it ("core": always there)
    capabilities: ClassVar[Capabilities]

    def available(self) -> str | None:
        """None when this backend can run here, else one line saying why not and what to install."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def build(self, onnx_path: Path, out_dir: Path, precision: str, component: str, **settings) -> BuildResult:
        raise BackendError(f"{self.name} runs the ONNX as it is: it builds nothing")

    def open(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Session:
        """A session on one artifact file; `options` are the artifact's runtime settings plus the caller's."""
        raise NotImplementedError

    def cpu_supports(self, precision: str) -> bool:
        """This CPU runs `precision` natively: one of the declared flags is present (none declared: yes)."""
        needs = self.capabilities.cpu_needs.get(precision)
        if not needs:
            return True
        from ...common.env import cpu_info

        return bool(set(needs) & set(cpu_info()["isa"]))

    def fits(self, artifact) -> bool:
        """The artifact was built for this machine (only backends whose plans are device-bound say no)."""
        return True

    def runs(self, artifact) -> bool:
        """Installed, the CPU has the precision natively, and the artifact fits this machine."""
        return (
            artifact.precision in self.capabilities.runs
            and self.available() is None
            and self.cpu_supports(artifact.precision)
            and self.fits(artifact)
        )

    def build_jobs(self, bundle, precisions: list[str] | None = None, **options) -> list[BuildJob]:
        """What `mmdeploy build` asks of a backend with ``device_build`` for ``bundle`` (a
        runtimes.bundle.Bundle, not imported here: the bundle module asks the backends): each
        component at each precision (fp32 unless given) from its fp32 ONNX. A backend that builds
        from settings the bundle carries (TensorRT's profiles) reads them here; ``options`` are the
        command's (dla_core)."""
        return [BuildJob(c, p, spec["onnx"]) for c, spec in bundle.components.items() for p in precisions or ["fp32"]]

    def check_builds(self, precision: str) -> None:
        if precision not in self.capabilities.builds:
            raise BackendError(f"{self.name} builds {', '.join(self.capabilities.builds)}, not {precision}")

    def describe(self) -> str:
        """What `mmdeploy doctor` shows beside the version (devices, providers, this GPU)."""
        return ""
