"""What machine a report was measured on: ratios differ between CPU kinds, so every report says."""

from __future__ import annotations

import os
import platform

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count()}


def library_versions() -> dict[str, str]:
    import importlib

    from .. import __version__

    out = {"mmdeploy": __version__, "python": platform.python_version()}
    for mod in ("numpy", "onnxruntime", "openvino", "torch", "transformers", "onnx"):
        try:
            m = importlib.import_module(mod)
            out[mod] = getattr(m, "__version__", None) or m.get_version()
        except Exception:
            continue
    return out


def environment(threads: int | None) -> dict:
    return {"cpu": cpu_info(), "threads": threads, "versions": library_versions(), "platform": platform.platform()}
