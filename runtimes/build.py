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
from ..errors import BackendError, InputError
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
    if backend == "tensorrt":  # the bundle's TensorRT block: profiles, precisions, int8 Q/DQ files
        settings = bundle.manifest.get("tensorrt")
        if not settings:
            raise InputError(
                f"{bundle.root} has no TensorRT build settings: export it with --target gpu (or jetson-orin / jetson-xavier)"
            )
        todo = precisions or settings["precisions"]
    else:
        todo = precisions or ["fp32"]
    for p in todo:
        be.check_builds(p)
    with BundleWriter(bundle.root, base=bundle) as w:
        for comp, spec in bundle.components.items():
            for precision in todo:
                src = w.stage_dir / spec["onnx"]
                kwargs = {}
                if backend == "tensorrt":
                    if precision == "int8":
                        entry = settings["int8_onnx"].get(comp)
                        if entry is None:
                            raise InputError(
                                f"{bundle.root} has no int8 Q/DQ ONNX for {comp}: run `mmdeploy quantize BUNDLE --backend tensorrt --precision int8 --calib DATA` first"
                            )
                        src = w.stage_dir / entry["path"]
                    kwargs = {
                        "shapes": {k: tuple(tuple(x) for x in v) for k, v in settings["profiles"][comp].items()},
                        "target": settings["target"],
                        "dla_core": dla_core,
                    }
                log(f"{comp}: building {backend}/{precision}")
                built = be.build(src, w.stage_dir, precision, comp, **kwargs)
                for f in built.files:
                    w.register(f)
                # the timing cache is reused by the next build; keep it with the bundle
                cache = "tensorrt/timing.cache"
                if backend == "tensorrt" and (w.stage_dir / cache).is_file():
                    w.register(cache)
                session = be.open(w.stage_dir / built.path, threads=threads, options=built.runtime)
                par = _fidelity(bundle, comp, session, threads)
                gate = GATES[precision]
                log(f"{comp}: {backend}/{precision} cosine {par['cosine']:.5f} vs fp32")
                w.add_artifact(
                    Artifact(
                        component=comp,
                        backend=backend,
                        precision=precision,
                        path=built.path,
                        files=built.files,
                        runtime=built.runtime,
                        built_for={"target": bundle.manifest.get("target", "cpu"), **built.built_for},
                        parity=par,
                        gate={"min_cosine": gate, "passed": par["cosine"] >= gate},
                    )
                )
    return Bundle.open(bundle.root)
