"""Test bundles exported once per content, not once per process.

`export_cached(source, out, **kwargs)` is `mmdeploy.exporter.export.export` for test fixtures, with a
cache keyed by everything the export reads: the package's source (every .py and .yaml outside tests/
and docs/, the shipped fixtures), a checkpoint folder's bytes, the arguments, the libraries' versions
and the CPU. The first caller exports into `out` as before and stores a copy; a later caller with the
same key (another pytest-xdist worker, the slow tier after the fast one, a re-run with no change to the
exporter) gets a copy of that bundle in its own `out`. Any edit to the exporter or the runtime changes
the key, so no test ever sees a bundle the code under test would not have written.

MMDEPLOY_TEST_BUNDLE_CACHE=0 turns it off; =DIR puts it elsewhere (default: .pytest_cache/ here).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import time
from functools import cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what an export reads besides its arguments; tests/ and docs/ are not among it
_SKIP_DIRS = {
    "tests",
    "docs",
    "build",
    "dist",
    "site",
    "out",
    ".git",
    ".venv",
    ".pytest_cache",
    "__pycache__",
    "node_modules",
}
_LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "onnxscript", "numpy", "pillow")
_STALE_S = 3600  # another code version's entries go once this old (a concurrent run may still read a fresh one)


def _hash_tree(h, root: Path, suffixes: tuple[str, ...] | None) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if suffixes is None or name.endswith(suffixes):
                p = Path(dirpath, name)
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")


@cache
def _code_digest() -> str:
    h = hashlib.sha256()
    _hash_tree(h, ROOT, (".py", ".yaml", ".json", ".txt"))
    _hash_tree(h, ROOT / "fixtures", None)  # the shipped checkpoints' weights
    for lib in _LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none\0".encode())
    h.update(platform.machine().encode())
    try:  # bf16 variants and quantization recipes depend on what the CPU runs natively
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        h.update(flags.encode())
    except (OSError, StopIteration):
        pass
    return h.hexdigest()[:16]


def _cache_root() -> Path | None:
    setting = os.environ.get("MMDEPLOY_TEST_BUNDLE_CACHE", "")
    if setting == "0":
        return None
    root = Path(setting) if setting else ROOT / ".pytest_cache" / "mmdeploy-bundles"
    here = root / _code_digest()
    here.mkdir(parents=True, exist_ok=True)
    for other in root.iterdir():  # entries of code that no longer exists
        if other != here and other.is_dir() and time.time() - other.stat().st_mtime > _STALE_S:
            shutil.rmtree(other, ignore_errors=True)
    return here


def _key(source: str, kwargs: dict) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in sorted(kwargs.items())}, sort_keys=True, default=str).encode())
    path = Path(source)
    if path.is_dir():  # a checkpoint folder a test built: its bytes, not its (per-run) path
        _hash_tree(h, path, None)
    else:
        h.update(source.encode())
    return h.hexdigest()[:24]


def export_cached(source: str, out: str | Path, **kwargs):
    """`export(source, out, **kwargs)`, or a copy of the bundle it wrote for the same content."""
    from mmdeploy.exporter.export import export
    from mmdeploy.runtimes.bundle import Bundle

    out = Path(out)
    root = _cache_root()
    if root is None or "log" in kwargs or "stages" in kwargs:  # a caller watching the export's steps
        return export(source, out, **kwargs)
    entry = root / _key(source, kwargs)
    with open(entry.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one exporter per key; the others wait for its copy
        if entry.is_dir():
            shutil.copytree(entry, out, symlinks=True)
            if Path(source).is_dir():  # what this run's export would have recorded
                manifest = json.loads((out / "manifest.json").read_text())
                manifest["source"]["path"] = str(Path(source).resolve())
                (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
            return Bundle.open(out)
        bundle = export(source, out, **kwargs)
        tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
        shutil.copytree(out, tmp, symlinks=True)
        os.replace(tmp, entry)
        return bundle
