"""`mmdeploy doctor`: what this machine can run and what is missing, one line per fact."""

from __future__ import annotations

import importlib
import shutil
import subprocess

from ..common.env import cpu_info

EXTRAS = (
    ("torch", "export"),
    ("transformers", "export"),
    ("onnx", "export"),
    ("nncf", "openvino"),
    ("fastapi", "serve"),
    ("uvicorn", "serve"),
    ("prometheus_client", "serve"),
    ("orjson", "serve"),
    ("httpx", "serve"),
)


def _gpu() -> str:
    if shutil.which("nvidia-smi") is None:
        return "gpu: none found (no nvidia-smi)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "gpu: nvidia-smi did not answer"
    return f"gpu: {out or 'none'}"


def report() -> list[str]:
    from ..runtimes.backends import backend_names, get_backend

    cpu = cpu_info()
    lines = [f"cpu: {cpu['model']} ({cpu['cores']} cores), ISA: {', '.join(cpu['isa']) or 'none of note'}", _gpu()]
    for name in backend_names():
        be = get_backend(name)
        why = be.available()
        if why is not None:
            lines.append(f"{name}: missing: {why}")
            continue
        detail = be.describe()
        lines.append(f"{name}: ok {be.version()}" + (f" ({detail})" if detail else ""))
    for module, extra in EXTRAS:
        try:
            importlib.import_module(module)
            lines.append(f"{module}: ok")
        except ImportError:
            lines.append(f"{module}: missing (pip install 'mmdeploy[{extra}]')")
    return lines
