"""`mmdeploy build`: engines built on the machine that runs them (no torch needed).

TensorRT plans are only valid for the GPU architecture and TensorRT version that built
them, so a GPU / Jetson bundle carries ONNX + build settings and the device builds its own
plans here. Each new engine is checked against the bundle's fp32 ONNX in ONNX Runtime on the
device before it is added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..common.datasets import open_dataset
from ..common.fidelity import GATES, compare
from ..errors import BackendError
from .backends import backend_names, get_backend
from .bundle import Artifact, Bundle, BundleWriter
from .feeds import BundleFeeds, component_kind


def _fidelity(bundle: Bundle, component: str, session, threads: int | None) -> dict:
    """Cosine vs the fp32 ONNX in ONNX Runtime on a few procedural images / captions."""
    images = any(component_kind(bundle, c) == "images" for c in bundle.components)
    data = open_dataset("shapes", limit=16) if images else open_dataset("sentences")
    feeds = BundleFeeds(bundle, data).feeds(component, 8)
    out = bundle.components[component]["outputs"][0]["name"]
    ref = (
        get_backend("onnxruntime")
        .open(bundle.path(bundle.components[component]["onnx"]), threads=threads)
        .run(feeds)[out]
    )
    par = compare(ref, session.run(feeds)[out])
    par["reference"] = f"fp32 ONNX in ONNX Runtime on 8 items of {data.name}"
    return par


def build(
    bundle_path: str | Path,
    backend: str,
    precisions: list[str] | None = None,
    dla_core: int | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Bundle:
    bundle = Bundle.open(bundle_path)
    be = get_backend(backend)
    if (why := be.available()) is not None:
        raise BackendError(why)
    if not be.capabilities.device_build:
        makers = [n for n in backend_names() if get_backend(n).capabilities.device_build]
        raise BackendError(f"`build` makes engines for {' and '.join(makers)}; {backend} runs the ONNX as it is")
    jobs = be.build_jobs(bundle, precisions, dla_core=dla_core)
    for p in dict.fromkeys(j.precision for j in jobs):
        be.check_builds(p)
    with BundleWriter(bundle.root, base=bundle) as w:
        for job in jobs:
            comp, precision = job.component, job.precision
            log(f"{comp}: building {backend}/{precision}")
            built = be.build(w.stage_dir / job.source, w.stage_dir, precision, comp, **job.settings)
            for f in [*built.files, *built.kept]:
                w.register(f)
            session = be.open(w.stage_dir / built.path, threads=threads, options=built.runtime)
            par = _fidelity(bundle, comp, session, threads)
            gate = GATES[precision]
            log(f"{comp}: {backend}/{precision} cosine {par['cosine']:.5f} vs fp32")
            w.add_artifact(
                Artifact.from_build(
                    built,
                    comp,
                    backend,
                    precision,
                    target=bundle.manifest.get("target", "cpu"),
                    parity=par,
                    gate={"min_cosine": gate, "passed": par["cosine"] >= gate},
                )
            )
    return Bundle.open(bundle.root)
