"""The family contract, checked over the registry (like optimum's check that every registered
model is tested): each family has both halves, tests of its parity and classification, a clear
export failure for a broken checkpoint, and no generic code tests a family's name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from mmdeploy.errors import CheckpointError  # noqa: E402
from mmdeploy.exporter.families import architectures, families  # noqa: E402
from mmdeploy.runtimes.pipelines import pipelines  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# family -> test modules holding its parity tests (PyTorch vs every backend) and, for dual encoders,
# its classification test: tests/test_<family>.py ("-" as "_") unless named here, so a new family
# adds its own test module and no line to this one
FAMILY_TESTS = {"clip": ["test_clip_contract.py", "test_shapes_fixture.py"]}


def family_tests(family: str) -> list[str]:
    return FAMILY_TESTS.get(family) or [f"test_{family.replace('-', '_')}.py"]


def test_every_family_has_both_halves():
    assert set(families()) == set(pipelines()), "an exporter without a pipeline (or the reverse)"
    for name, cls in families().items():
        assert cls.architectures, name
        assert pipelines()[name].family == name


@pytest.mark.parametrize("family", sorted(families()))
def test_every_registered_family_is_tested(family):
    modules = family_tests(family)
    assert all((TESTS / m).is_file() for m in modules), f"family {family!r} is registered but {modules} is missing"
    src = "".join((TESTS / m).read_text() for m in modules)
    tests = [
        n.name
        for m in modules
        for n in ast.walk(ast.parse((TESTS / m).read_text()))
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    ]
    assert any(k in t for t in tests for k in ("match", "parity", "tokens")), (family, tests)
    if pipelines()[family].task == "zero-shot":
        assert any("classify" in t or "zero_shot" in t for t in tests), (family, tests)
        assert "1e-4" in src or "top1" in src or "top-1" in src, family


@pytest.mark.parametrize("arch", sorted(architectures()))
def test_every_architecture_fails_export_clearly_without_weights(arch, tmp_path):
    """config.json naming the architecture, no weights / corrupt weights: one CheckpointError, nothing written."""
    from mmdeploy.exporter.export import export

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"architectures": [arch]}))
    with pytest.raises(CheckpointError, match="no weights"):
        export(str(tmp_path / "ckpt"), tmp_path / "out")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError) as exc:
        export(str(tmp_path / "ckpt"), tmp_path / "out")
    assert "\n" not in str(exc.value) and "ckpt" in str(exc.value)
    assert not (tmp_path / "out").exists()


def _family_names_compared(path: Path, names: set[str]) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for c in [node.left, *node.comparators]:
                if isinstance(c, ast.Constant) and c.value in names:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with {c.value!r}")
    return bad


def test_no_generic_code_tests_a_family_name():
    names = set(families())
    own = {p.resolve() for p in (ROOT / "exporter" / "families").glob("*.py")}
    own |= {p.resolve() for p in (ROOT / "runtimes" / "pipelines").glob("*.py")}
    bad = []
    for layer in ("exporter", "runtimes", "benchmarks", "common"):
        for path in (ROOT / layer).rglob("*.py"):
            if path.resolve() not in own:
                bad += _family_names_compared(path, names)
    bad += _family_names_compared(ROOT / "cli.py", names)
    assert not bad, "family names tested outside the family's files:\n" + "\n".join(bad)


def test_registries_find_every_family_whichever_module_is_imported_first():
    """Importing one family module first (the server imports the caption pipeline) must not hide
    the others: the registries discover with a flag, not by checking for an empty table."""
    import subprocess
    import sys

    code = (
        "import mmdeploy.runtimes.pipelines.caption, mmdeploy.exporter.families.siglip\n"
        "from mmdeploy.runtimes.pipelines import pipelines\n"
        "from mmdeploy.exporter.families import families\n"
        "print(sorted(pipelines()), sorted(families()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    want = str(sorted(families()))
    assert out.stdout.strip() == f"{sorted(pipelines())} {want}" and "'clip'" in want and "'caption'" in want


# -- declared capabilities (common/capabilities.py) ----------------------------------------------


def test_every_family_declares_its_capabilities_on_both_halves():
    """Both halves subclass their base; the runtime capabilities agree; DISTILL exactly when a
    distiller is attached, PRUNE exactly when a pruner is; PRUNE and DISTILL are build-time only."""
    from mmdeploy.common.capabilities import Capability
    from mmdeploy.exporter.families.base import Family
    from mmdeploy.runtimes.pipelines.pipeline import Pipeline

    build_time = {Capability.DISTILL, Capability.PRUNE}
    for name, exp in families().items():
        pipe = pipelines()[name]
        assert issubclass(exp, Family) and issubclass(pipe, Pipeline), name
        assert exp.capabilities - build_time == pipe.capabilities, name
        assert not pipe.capabilities & build_time, name
        assert exp.can(Capability.DISTILL) == (exp.distiller is not None), name
        assert exp.distiller is None or isinstance(exp.distiller, type), f"{name}: attach the distiller class"
        assert exp.can(Capability.PRUNE) == (exp.pruner is not None), name
        assert exp.pruner is None or isinstance(exp.pruner, type), f"{name}: attach the pruner class"
        assert pipe.capabilities, f"{name} declares no capability"


def test_a_pipeline_declares_a_capability_exactly_when_it_defines_its_methods():
    from mmdeploy.runtimes.pipelines.pipeline import METHODS, Pipeline

    for name, cls in pipelines().items():
        for cap, methods in METHODS.items():
            for m in methods:
                own = getattr(cls, m) is not getattr(Pipeline, m)
                assert own == cls.can(cap), (
                    f"{name}: {m} {'defined' if own else 'missing'}, {cap.value} declared={cls.can(cap)}"
                )


def test_an_undeclared_capability_is_one_typed_error_naming_the_families_that_can():
    from mmdeploy.common.capabilities import Capability
    from mmdeploy.errors import CapabilityError, InputError
    from mmdeploy.runtimes.pipelines import families_that, pipeline_class

    cap = pipeline_class("caption")
    assert not cap.can(Capability.CLASSIFY) and cap.can(Capability.CAPTION)
    bare = cap.__new__(cap)  # no bundle opened: the base's defaults still answer
    with pytest.raises(CapabilityError) as exc:
        bare.classify("x.png", ["a", "b"])
    msg = str(exc.value)
    assert isinstance(exc.value, InputError) and "\n" not in msg
    assert "caption family: classify needs a dual-encoder bundle" in msg
    assert all(f in msg for f in families_that(Capability.CLASSIFY)) and {"clip", "siglip", "align"} <= set(
        families_that(Capability.CLASSIFY)
    )
    with pytest.raises(CapabilityError, match=r"^/b is a caption bundle: embed --image needs a bundle with an image"):
        raise cap.cannot(Capability.EMBED_IMAGES, "embed --image", "/b")


# -- shared pieces: one helper module per side, no private cross-imports ---------------------------

# modules of the two family packages that are helpers, not families (the registries import them
# in their package scan; only @register makes a family)
HELPERS = {"exporter/families": {"base", "decoders"}, "runtimes/pipelines": {"base", "pipeline", "decoders"}}


def test_every_module_of_the_family_packages_is_a_family_or_a_known_helper():
    for pkg, registry in (("exporter/families", families()), ("runtimes/pipelines", pipelines())):
        modules = {p.stem for p in (ROOT / pkg).glob("*.py")} - {"__init__"}
        registering = {cls.__module__.rsplit(".", 1)[1] for cls in registry.values()}
        assert not registering & HELPERS[pkg], f"{pkg}: a helper module registers a family"
        assert modules - HELPERS[pkg] == registering, f"{pkg}: modules that are neither a family nor a helper"


def test_no_family_module_imports_a_private_name_of_another():
    bad = []
    for pkg in HELPERS:
        for path in sorted((ROOT / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    bad += [f"{pkg}/{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name[0] == "_"]
    assert not bad, "private helpers imported across family modules (move them to a helper module):\n" + "\n".join(bad)


# -- a new dual encoder is its two family files and a registry row ---------------------------------


def test_a_new_dual_encoder_needs_only_its_two_family_classes_and_a_registry_row(tmp_path, monkeypatch, cli_inprocess):
    """A throwaway family ("trial-clip": a CLIP under its own architecture name), registered the way a
    new family file registers itself, plus a models.yaml row: export, the CLI's embed / classify,
    an embedding job, search and serve take it with no other edit, and the family lists of the
    messages name it."""
    import base64
    import shutil

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mmdeploy.common.capabilities import Capability
    from mmdeploy.common.datasets import shapes
    from mmdeploy.exporter import families as exporter_families
    from mmdeploy.exporter.export import export
    from mmdeploy.exporter.families.clip import ClipFamily
    from mmdeploy.exporter.registry import package_path, registry
    from mmdeploy.runtimes import pipelines as runtime_pipelines
    from mmdeploy.runtimes.pipelines.clip import ClipPipeline
    from mmdeploy.runtimes.serve import create_app

    for reg in (exporter_families._REGISTRY, runtime_pipelines._REGISTRY):
        reg.all()  # discover the real families first, then register the trial one in a copy
        monkeypatch.setattr(reg, "_classes", dict(reg._classes))

    # -- exporter/families/trial_clip.py --
    @exporter_families.register
    class TrialClipFamily(ClipFamily):
        family = "trial-clip"
        architectures = {"TrialCLIPModel": ("CLIPModel", "CLIPConfig")}
        model_types = ()
        default_classes = ("CLIPModel", "CLIPConfig")
        capabilities = ClipFamily.capabilities - {Capability.DISTILL}
        distiller = None

    # -- runtimes/pipelines/trial_clip.py --
    @runtime_pipelines.register
    class TrialClipPipeline(ClipPipeline):
        family = "trial-clip"

    # -- models.yaml row (its checkpoint: clip-shapes saved under the new architecture name) --
    ckpt = tmp_path / "trial-shapes"
    shutil.copytree(package_path("fixtures/clip-shapes"), ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "architectures": ["TrialCLIPModel"]}))
    monkeypatch.setitem(registry(), "trial-shapes", {"family": "trial-clip", "path": str(ckpt)})

    bundle = tmp_path / "bundle"
    b = export("trial-shapes", bundle, backends=["onnxruntime"], precisions=["fp32"], threads=2)
    assert b.family == "trial-clip"
    for cap in (Capability.EMBED_IMAGES, Capability.EMBED_TEXTS, Capability.CLASSIFY):
        assert "trial-clip" in runtime_pipelines.families_that(cap)

    img = tmp_path / "s.png"
    shapes.generate("test", 1)[0].image.save(img)
    r = cli_inprocess("classify", str(bundle), str(img), "--labels", "a red circle,a blue square")
    assert r.returncode == 0 and "%" in r.stdout, r.stderr
    r = cli_inprocess("embed", str(bundle), "--image", str(img), "--text", "a red circle")
    assert r.returncode == 0 and "cosine similarity" in r.stdout, r.stderr
    (tmp_path / "imgs").mkdir()
    for i, s in enumerate(shapes.generate("test", 3)):
        s.image.save(tmp_path / "imgs" / f"{i}.png")
    r = cli_inprocess("embed", str(bundle), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "job"))
    assert r.returncode == 0, r.stderr
    r = cli_inprocess("search", str(tmp_path / "job"), "--text", "a red circle", "-k", "2")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2, r.stderr
    r = cli_inprocess("caption", str(bundle), str(img))  # and what it cannot do, it refuses in one line
    assert r.returncode == 2 and "is a trial-clip bundle: caption needs a captioning bundle (caption" in r.stderr

    with TestClient(create_app({"trial": bundle}, warmup=False)) as client:
        card = client.get("/v1/models").json()["data"][0]
        assert card["family"] == "trial-clip"
        assert set(card["capabilities"]) == {"text-embeddings", "image-embeddings", "classify"}
        url = "data:image/png;base64," + base64.b64encode(img.read_bytes()).decode()
        got = client.post("/v1/classify", json={"image": url, "labels": ["a red circle", "a blue square"]})
        assert got.status_code == 200, got.text


def test_callers_ask_the_declared_capability_and_never_probe_a_family():
    """No getattr / hasattr on a pipeline or family object in the code that drives families (a
    probe silently says "cannot" when a method is renamed; can() fails loudly in the contract tests)."""
    probed = {"pipe", "pipeline", "pipe_cls", "fam", "family", "cls", "m"}
    files = [ROOT / "cli.py", ROOT / "exporter" / "export.py", ROOT / "exporter" / "quantize.py"]
    files += [ROOT / "exporter" / "distill.py", ROOT / "exporter" / "families" / "__init__.py"]
    files += [ROOT / "runtimes" / "manifest.py", *(ROOT / "runtimes" / "serve").glob("*.py")]
    files += [*(ROOT / "jobs").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and _names_a_family(node.args[0], probed)
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}({ast.unparse(node.args[0])}, ...)")
    assert not bad, "capability probes (declare a Capability, or a base-class default, instead):\n" + "\n".join(bad)


def _names_a_family(arg: ast.expr, probed: set[str]) -> bool:
    """`pipe`, `fam`, ... or `pipeline_class(...)` / `family_exporter(...)`."""
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name):
        return arg.func.id in ("pipeline_class", "family_exporter")
    return isinstance(arg, ast.Name) and arg.id in probed
