"""Choosing and opening variants of a bundle."""

from __future__ import annotations

import os

from ..errors import BackendError, BundleError, InputError
from .backends import get_backend
from .bundle import Artifact, Bundle, BundleWriter
from .session import Session

# Without measurements for this machine, prefer in this order (fastest first on the
# CPUs measured so far: OpenVINO bf16 > OpenVINO f32 ≈ ORT f32 on AVX-512 machines).
PREFERENCE = [
    ("tensorrt", "int8"),
    ("tensorrt", "fp16"),
    ("onnxruntime", "int4"),  # captioners only: int4 decoder, int8 encoder
    ("openvino", "int8"),
    ("onnxruntime", "int8"),
    ("openvino", "bf16"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
]


def runs_here(a: Artifact) -> bool:
    """Its backend is installed, this CPU has the precision natively, and it fits (e.g. a GPU plan)."""
    try:
        return get_backend(a.backend).runs(a)
    except BackendError:  # a backend this mmdeploy does not have
        return False


def select_variant(bundle: Bundle, backend: str | None = None, precision: str | None = None) -> tuple[str, str]:
    """(backend, precision) that every component has; the preferred one that passed its gate."""
    for flag, v in (("--backend", backend), ("--precision", precision)):
        if v is not None and not v.strip():
            raise InputError(f"{flag} is empty: give a name, or leave the flag out for the default variant")
    if backend is not None:
        get_backend(backend)  # unknown name -> clear error
    comps = list(bundle.components)
    variants: dict[tuple[str, str], list[Artifact]] = {}
    for a in bundle.artifacts:
        variants.setdefault((a.backend, a.precision), []).append(a)
    complete = {k: v for k, v in variants.items() if {a.component for a in v} >= set(comps)}
    matching = {
        k: v
        for k, v in complete.items()
        if (backend is None or k[0] == backend) and (precision is None or k[1] == precision)
    }
    if not matching:
        have = ", ".join(f"{b}/{p}" for b, p in sorted(complete)) or "none"
        want = "/".join(x for x in (backend, precision) if x) or "any variant"
        raise BundleError(f"{bundle.root} has no {want} for all components (has: {have})")
    explicit = backend is not None and precision is not None
    candidates = [
        k for k, v in matching.items() if explicit or (all(a.passed for a in v) and all(runs_here(a) for a in v))
    ]
    if not candidates:
        raise BundleError(
            f"{bundle.root}: no variant matching {backend or 'any'}/{precision or 'any'} passed its "
            "accuracy gate and runs here; name --backend and --precision to force one"
        )
    pick, below = compress_choice(bundle)
    # a compressed bundle: never by default a variant its search found below --max-drop / --budget-ms,
    # and on the machine it searched on, its pick
    candidates = [k for k in candidates if k not in below] or candidates
    if pick in candidates:
        return pick
    measured = measured_latency(bundle)
    rank = {k: i for i, k in enumerate(PREFERENCE)}
    # fastest measured on this machine first (bench records it), then the static preference
    return min(candidates, key=lambda k: (measured.get(k, float("inf")), rank.get(k, len(rank))))


def machine_key() -> str:
    """CPU model + ISA flags: measurements only transfer between identical CPU kinds."""
    from ..common.env import cpu_info

    cpu = cpu_info()
    return f"{cpu['model']} [{' '.join(cpu['isa'])}]"


def compress_choice(bundle: Bundle) -> tuple[tuple[str, str] | None, set[tuple[str, str]]]:
    """(the variant `mmdeploy compress` picked, if it searched on this machine; the bundle's variants
    its search found below the accuracy floor or over the latency budget)."""
    rec = bundle.manifest.get("compress")
    if not rec:
        return None, set()
    student = next(r["student"] for r in rec["candidates"] if r["id"] == rec["chosen"])
    below = {(r["backend"], r["precision"]) for r in rec["candidates"] if r["student"] == student and not r["passed"]}
    here = rec["machine"] == machine_key()
    return ((rec["default"]["backend"], rec["default"]["precision"]) if here else None), below


def measured_latency(bundle: Bundle) -> dict[tuple[str, str], float]:
    """(backend, precision) -> summed batch-1 p50 over components, as `bench` recorded here."""
    table = bundle.manifest.get("measured", {}).get(machine_key(), {})
    return {tuple(k.split("/", 1)): v for k, v in table.items()}


def record_measured(bundle: Bundle, table: dict[str, float], busy: str | None = None) -> None:
    """Merge {"backend/precision": summed batch-1 ms} into the manifest under this machine's key,
    into what the bundle holds when the writer lock is ours (another writer may have added since).
    ``busy`` (why the machine was flagged busy): kept apart under "measured_busy" with the reason,
    never used to choose the default variant (measured_latency reads "measured" only)."""
    with BundleWriter(bundle.root, base=bundle) as w:
        if busy:
            w.manifest.setdefault("measured_busy", {}).setdefault(machine_key(), {}).update(
                {k: {"ms": v, "busy": busy} for k, v in table.items()}
            )
        else:
            w.manifest.setdefault("measured", {}).setdefault(machine_key(), {}).update(table)


def open_session(
    bundle: Bundle,
    artifact: Artifact,
    threads: int | None = None,
    device: str | None = None,
    options: dict | None = None,
) -> Session:
    """Open one artifact; `device` picks ORT's execution providers (cpu, cuda, tensorrt) or
    OpenVINO's device (cpu, gpu); `options` add backend runtime options (e.g. ORT's spin)."""
    be = get_backend(artifact.backend)
    why = be.available()
    if why is not None:
        raise BackendError(why)
    bundle.verify(artifact.files)
    return be.open(bundle.path(artifact.path), device, threads, dict(artifact.runtime, **(options or {})))


def open_sessions(
    bundle: Bundle,
    artifacts: dict[str, Artifact],
    threads: int | None = None,
    device: str | None = None,
    options: dict[str, dict] | None = None,
) -> dict[str, Session]:
    """Open a pipeline's components together: session creation (weight mapping, prepacking) runs
    in native code without the GIL, so two ~500 MB graphs open in about the time of the larger."""
    from concurrent.futures import ThreadPoolExecutor

    for a in artifacts.values():  # hashes / stamps here, in one thread
        bundle.verify(a.files)
    if len(artifacts) < 2:
        return {c: open_session(bundle, a, threads, device, (options or {}).get(c)) for c, a in artifacts.items()}
    with ThreadPoolExecutor(max_workers=len(artifacts)) as pool:
        futures = {
            c: pool.submit(open_session, bundle, a, threads, device, (options or {}).get(c))
            for c, a in artifacts.items()
        }
        return {c: f.result() for c, f in futures.items()}


def load(
    bundle: str | os.PathLike | Bundle,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    verify: bool = False,
):
    """Open a bundle's pipeline on one (backend, precision); default: the preferred passing variant.
    `device`: cpu (default), cuda / tensorrt (onnxruntime-gpu execution providers), gpu (OpenVINO).
    `verify`: hash every file of the bundle now (default: the files used, skipping those whose
    stat stamp is unchanged since they last hashed correctly)."""
    from .pipelines import pipeline_class

    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    if verify:
        b.verify_all(full=True)
    pipeline = pipeline_class(b.family, str(b.root))
    backend, precision = select_variant(b, backend, precision)
    return pipeline(b, backend, precision, threads=threads, **({"device": device} if device else {}))
