"""tools/ (the fixture trainers) is build-time code of the checkout: not in the wheel, imported by
no module of the package, runnable as `python -m tools.fixtures NAME`."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_tools_are_not_a_package_of_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "mmdeploy.exporter" in packages
    assert not [p for p in packages if p.split(".")[1:2] == ["tools"]]


def test_every_package_of_the_tree_is_in_the_wheel():
    """pyproject lists packages one by one: a new subpackage left out is missing from a built wheel."""
    tomllib = pytest.importorskip("tomllib")
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    skip = ("tools", "tests", "docs", "build", "site")
    found = {
        ".".join(["mmdeploy", *init.parent.relative_to(ROOT).parts])
        for init in ROOT.rglob("__init__.py")
        if not init.relative_to(ROOT).parts[0].startswith(".") and init.relative_to(ROOT).parts[0] not in skip
    }
    assert found - packages == set(), "packages missing from pyproject's list"


def test_no_module_of_the_package_imports_the_tools():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tools", "tests", ".venv", "build", "docs") or rel.parts[0].startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bad += [
                f"{rel}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0] == "tools" or n.startswith("mmdeploy.tools")
            ]
    assert not bad, "\n".join(bad)


def test_one_command_names_every_fixture():
    r = subprocess.run([sys.executable, "-m", "tools.fixtures"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    for name in ("clip-shapes", "siglip-shapes", "align-shapes", "caption-shapes", "vqa-shapes", "gpt2-tokenizer"):
        assert f"python -m tools.fixtures {name}" in r.stderr


def test_one_byte_table_and_it_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode as reference

    from tools.fixtures.harness import bytes_to_unicode

    assert bytes_to_unicode() == reference()


def test_recipe_overrides_keep_the_recipe_types():
    from tools.fixtures.harness import recipe_with

    ap = argparse.ArgumentParser()
    r = recipe_with(
        {"steps": 5000, "lr": 1.5e-3, "vision_init": "fixtures/x"}, ["steps=40", "lr=2e-3", "vision_init="], ap
    )
    assert r == {"steps": 40, "lr": 2e-3, "vision_init": ""} and type(r["steps"]) is int
    with pytest.raises(SystemExit):
        recipe_with({"steps": 1}, ["step=2"], ap)


def test_the_retrain_check_names_the_files_that_differ(monkeypatch, capsys):
    """`python -m tools.fixtures --check NAME` compares every file but the card: a retrain equal to the
    shipped folder passes, one changed byte in one file fails naming that file (no training here)."""
    import shutil

    from tools.fixtures import __main__ as fixtures

    def retrain(flip: bool):
        def run(argv):
            out = Path(argv[argv.index("--out") + 1])
            shutil.copytree(fixtures.FIXTURES / "align-shapes", out)
            (out / "README.md").write_text("a card with this run's own times")
            if flip:
                data = bytearray((out / "model.safetensors").read_bytes())
                data[-1] ^= 1
                (out / "model.safetensors").write_bytes(bytes(data))
            return 0

        return run

    monkeypatch.setitem(fixtures.COMMANDS, "align-shapes", retrain(False))
    assert fixtures.main(["--check", "align-shapes"]) == 0
    assert "align-shapes: bit-identical" in capsys.readouterr().out
    monkeypatch.setitem(fixtures.COMMANDS, "align-shapes", retrain(True))
    assert fixtures.main(["--check", "align-shapes"]) == 1
    assert "align-shapes: differs: model.safetensors" in capsys.readouterr().out
    assert fixtures.main(["--check", "gpt2-tokenizer"]) == 2


@pytest.mark.slow  # two short trainings (40 steps on 640 images): ~25 s of CPU each
def test_clip_shapes_training_is_deterministic(tmp_path):
    """The trainer gives the same bytes twice (seeds, 2 threads, the random draws' order): the
    precondition of retraining a shipped fixture bit for bit. The full comparison with fixtures/ is
    `python -m tools.fixtures --check clip-shapes` (a 5000-step retrain, ~45 min on a busy 2-core box)."""
    from tools.fixtures.__main__ import _digests

    short = ["--set", "steps=40", "--set", "train_images=640", "--set", "eval_images=50"]
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        r = subprocess.run(
            [sys.executable, "-m", "tools.fixtures", "clip-shapes", "--out", str(out), *short],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
        assert "[done]" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]  # exit 1: 40 steps miss the 95% bar
        outs.append(_digests(out))
    assert outs[0] == outs[1] and "model.safetensors" in outs[0]
