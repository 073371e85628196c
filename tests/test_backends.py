"""Backends declare what they can do, and nothing outside a backend reaches into its sessions.

- no private attribute of a session is read outside its backend module (an AST walk);
- every registered backend declares its capabilities on its own class;
- a new backend is one class registered by name: a tiny one defined here opens a bundle variant
  through select / load without any other module knowing it.
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.common.env import ISA_FLAGS
from mmdeploy.errors import InputError
from mmdeploy.runtimes import backends
from mmdeploy.runtimes.backends import Backend, Capabilities, backend_names, get_backend, register
from mmdeploy.runtimes.bundle import Bundle, BundleWriter
from mmdeploy.runtimes.select import load, open_session, select_variant
from mmdeploy.runtimes.session import PRECISIONS, Session, TensorSpec

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ["runtimes", "exporter", "benchmarks", "jobs", "cli.py"]
# the files that may read a session's private fields: the backend modules themselves
BACKEND_FILE = re.compile(r"runtimes/(backends/)?(onnxruntime|openvino|tensorrt)[^/]*\.py$")


def _sources() -> list[Path]:
    out = []
    for entry in SCANNED:
        p = ROOT / entry
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return [p for p in out if not BACKEND_FILE.search(p.relative_to(ROOT).as_posix())]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _session_fields() -> set[str]:
    """Every private `self._x` the backends' classes set: what a session keeps to itself."""
    fields = set()
    for p in (ROOT / "runtimes" / "backends").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                if _private(node.attr):
                    fields.add(node.attr)
    return fields


def test_no_private_session_attribute_is_read_outside_its_backend():
    fields = _session_fields()
    assert {"_sess", "_compiled", "_request"} <= fields  # the walk sees the backends' sessions
    bad = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                base = ast.unparse(node.value)
                if base in ("self", "cls"):
                    continue
                # a backend session's field on anything, or any private field of something named a session
                if node.attr in fields or "sess" in base.lower() or "decoder" in base.lower():
                    bad.append(f"{rel}:{node.lineno}: {base}.{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                # getattr(x, "_field") / hasattr / setattr: the probe that silently fell back to run()
                if node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1:
                    name = node.args[1]
                    if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                        bad.append(f"{rel}:{node.lineno}: {node.func.id}({ast.unparse(node.args[0])}, {name.value!r})")
    assert not bad, "private session fields read outside their backend:\n" + "\n".join(bad)


def test_no_capability_probe_of_a_backend_module():
    """select / export / quantize ask `capabilities` and methods, never getattr(module, "cpu_supports")."""
    bad = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        for probe in ("backend_module", 'getattr(mod, "cpu_supports"', 'getattr(mod, "fits"'):
            if probe in text:
                bad.append(f"{rel}: {probe}")
    assert not bad, bad


def test_every_registered_backend_declares_capabilities():
    names = backend_names()
    assert {"onnxruntime", "openvino", "tensorrt"} <= set(names)
    for name in names:
        be = get_backend(name)
        cls = type(be)
        assert cls.name == name
        assert "capabilities" in vars(cls), f"{name} inherits its capabilities instead of declaring them"
        caps = cls.capabilities
        assert isinstance(caps, Capabilities)
        assert caps.builds and set(caps.builds) <= set(caps.runs) <= set(PRECISIONS), name
        assert caps.devices, name
        assert all(set(flags) <= set(ISA_FLAGS) for flags in caps.cpu_needs.values()), name  # checkable here
        assert isinstance(cls.extra, str) and cls.extra
        for method in ("available", "version", "open"):
            assert getattr(cls, method) is not getattr(Backend, method), f"{name} does not implement {method}"
        why = be.available()
        assert why is None or (isinstance(why, str) and "\n" not in why)
    assert get_backend("onnxruntime").capabilities.kv_binding
    assert get_backend("tensorrt").capabilities.plans_tied_to_device


def test_unknown_backend_is_one_clear_error():
    from mmdeploy.errors import BackendError

    with pytest.raises(BackendError, match="unknown backend 'nope': choose from onnxruntime, openvino"):
        get_backend("nope")


# -- a backend added by a test: one class, registered by name -----------------------------------

_ORT_NP = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}


class PlainOrtSession(Session):
    """ONNX Runtime through its plain InferenceSession.run (no IOBinding, no shared state)."""

    def __init__(self, path):
        import onnxruntime as ort

        self._ort = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [TensorSpec(i.name, _ORT_NP[i.type], tuple(i.shape)) for i in self._ort.get_inputs()]
        self.outputs = [TensorSpec(o.name, _ORT_NP[o.type], tuple(o.shape)) for o in self._ort.get_outputs()]
        self.runs = 0

    def run_impl(self, feeds):
        self.runs += 1
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._ort.run(names, feeds)))

    def close(self) -> None:
        self._ort = None
        super().close()


class PlainBackend(Backend):
    name = "plain-test"
    extra = "core"
    capabilities = Capabilities(builds=("fp32",), runs=("fp32",), devices=("cpu",))
    opened: list[PlainOrtSession] = []

    def available(self):
        return None

    def version(self):
        return "0"

    def open(self, path, device=None, threads=None, options=None):
        session = PlainOrtSession(path)
        self.opened.append(session)
        return session


@pytest.fixture
def plain_backend(monkeypatch):
    backend_names()  # discover the package's backends first, then register ours on a copy of the table
    monkeypatch.setattr(backends._REGISTRY, "_classes", dict(backends._REGISTRY._classes))
    register(PlainBackend)
    PlainBackend.opened = []
    yield PlainBackend


@pytest.fixture
def plain_bundle(clip_bundle, tmp_path, plain_backend) -> Path:
    """The clip-shapes bundle with its fp32 ONNX files also listed as plain-test/fp32 artifacts."""
    root = tmp_path / "plain"
    shutil.copytree(clip_bundle, root)
    with BundleWriter(root, base=Bundle.open(root)) as w:
        for a in list(w.artifacts):
            if (a.backend, a.precision) == ("onnxruntime", "fp32"):
                w.add_artifact(replace(a, backend="plain-test", runtime={}))
    return root


def test_a_new_backend_is_one_class_and_a_registry_entry(plain_bundle, plain_backend):
    b = Bundle.open(plain_bundle)  # the manifest check knows registered backends by name
    assert select_variant(b, backend="plain-test") == ("plain-test", "fp32")
    pipe = load(b, backend="plain-test", precision="fp32", threads=1)
    ref = load(b, backend="onnxruntime", precision="fp32", threads=1)
    texts = ["a red circle", "a blue square"]
    np.testing.assert_allclose(pipe.embed_texts(texts), ref.embed_texts(texts), rtol=1e-5, atol=1e-6)
    assert plain_backend.opened and all(s.runs for s in plain_backend.opened if s.inputs[0].name == "input_ids")


def test_session_checks_feeds_before_running(plain_bundle, plain_backend):
    b = Bundle.open(plain_bundle)
    art = b.find("text", "plain-test", "fp32")[0]
    with open_session(b, art) as sess:
        spec = {s.name: s for s in sess.inputs}
        good = {n: np.ones([d if isinstance(d, int) else 2 for d in s.shape], s.dtype) for n, s in spec.items()}
        assert sess.run(good)
        some = next(iter(spec))
        with pytest.raises(InputError, match=f"missing input '{some}'"):
            sess.run({k: v for k, v in good.items() if k != some})
        with pytest.raises(InputError, match="unknown input 'nope'"):
            sess.run({**good, "nope": good[some]})
        with pytest.raises(InputError, match=f"input '{some}': rank 1"):
            sess.run({**good, some: good[some].reshape(-1)})
        with pytest.raises(InputError, match=f"input '{some}': dtype float32"):
            sess.run({**good, some: good[some].astype(np.float32)})
        runs = sess.runs
    assert runs == 1  # refused feeds never reached run_impl
    assert sess.closed


def test_declared_cpu_needs_decide_whether_a_variant_runs_here(monkeypatch):
    """A precision with declared CPU flags runs where one of them is present (base.Backend.cpu_supports)."""
    from mmdeploy.common import env
    from mmdeploy.runtimes.bundle import Artifact

    class NeedsBf16(PlainBackend):
        capabilities = Capabilities(
            builds=("fp32",), runs=("fp32", "bf16"), devices=("cpu",), cpu_needs={"bf16": ("avx512_bf16", "amx_bf16")}
        )

    be = NeedsBf16()
    bf16 = Artifact(component="text", backend="plain-test", precision="bf16", path="text.onnx")
    monkeypatch.setattr(env, "cpu_info", lambda: {"model": "test", "isa": ["avx2"], "cores": 2})
    assert not be.runs(bf16) and be.runs(replace(bf16, precision="fp32"))
    assert not be.runs(replace(bf16, precision="int8"))  # a precision it does not declare
    monkeypatch.setattr(env, "cpu_info", lambda: {"model": "test", "isa": ["avx2", "amx_bf16"], "cores": 2})
    assert be.runs(bf16)
