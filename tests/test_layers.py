"""The package's layering, checked from the source (no imports run): arrows only run downward.

    cli ─▶ exporter/ ─▶ runtimes/ ◀─ benchmarks/ ; cli ─▶ jobs/ ─▶ runtimes/ ;
    every layer may use common/ and errors.py

runtimes/ is what a device installs: it never imports exporter/, benchmarks/ or cli.
exporter/ never imports the bench harness. common/ imports no other layer. benchmarks/ may
reach exporter/ only for the PyTorch reference (lazily, where torch is installed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# layer -> layers it must never import
FORBIDDEN = {
    "common": {"runtimes", "exporter", "benchmarks", "cli"},
    "runtimes": {"exporter", "benchmarks", "cli"},
    "exporter": {"benchmarks", "cli"},
    "benchmarks": {"cli"},
    "jobs": {"exporter", "benchmarks", "cli"},  # batch jobs run where the device runtime runs
}
# modules a layer may not import at all (the device runtime and the shared base stay torch-free)
FORBIDDEN_THIRD_PARTY = {
    "common": {"torch", "transformers"},
    "runtimes": {"torch", "transformers"},
    "jobs": {"torch", "transformers"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in a file, relative ones resolved."""
    rel = path.relative_to(ROOT).with_suffix("")
    pkg = ["mmdeploy", *rel.parts[:-1]] if rel.name != "__init__" else ["mmdeploy", *rel.parts[:-1]]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if node.module is None or node.level:  # `from .. import x`: x may be a module
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mmdeploy" or len(parts) < 2:
        return None
    return parts[1]


def _sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_runs_up_the_layers(layer):
    bad = []
    for path in _sources(layer):
        for line, mod in _imports(path):
            if _layer(mod) in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
            if mod.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_check_sees_a_wrong_arrow(tmp_path, monkeypatch):
    """The checker itself: a runtimes file importing the bench harness is caught."""
    fake = ROOT / "runtimes" / "_layer_probe.py"
    fake.write_text("from ..benchmarks.bench import bench\nimport torch\n")
    try:
        mods = {m for _, m in _imports(fake)}
        assert "mmdeploy.benchmarks.bench" in mods and "torch" in mods
        with pytest.raises(AssertionError, match="_layer_probe.py:1 imports mmdeploy.benchmarks.bench"):
            test_no_import_runs_up_the_layers("runtimes")
    finally:
        fake.unlink()


def _module(path: Path) -> str:
    return ".".join(["mmdeploy", *path.relative_to(ROOT).with_suffix("").parts]).removesuffix(".__init__")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a module graph: each strongly connected group of two or more modules."""
    order, low, stack, out = {}, {}, [], []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return out


def test_the_device_runtime_has_no_import_circle():
    """runtimes/ imports in one direction inside itself too, type-only and lazy imports counted
    (serve/model declares the ModelHost it needs; serve/state implements it and imports model)."""
    paths = {_module(p): p for p in _sources("runtimes")}
    graph = {m: {i for _, i in _imports(p) if i in paths and i != m} for m, p in paths.items()}
    assert not _cycles(graph), _cycles(graph)
    # the check itself sees a circle
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
