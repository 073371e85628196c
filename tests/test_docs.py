"""The README and the docs site: short, true to CI, generated parts up to date, the site builds."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"


def _gen():
    spec = importlib.util.spec_from_file_location("mmdeploy_docs_gen", ROOT / "docs" / "gen_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _first_code_block(text: str) -> list[str]:
    m = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert m, "README has no code block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _pytest_runs(script: str) -> list[list[str]]:
    """Every `python -m pytest ...` command of a shell script, as argument lists."""
    runs = []
    for line in script.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        for part in re.split(r"&&|;|\|\|", line):
            if "pytest" in part and shlex.split(part)[:3] == ["python", "-m", "pytest"]:
                runs.append(shlex.split(part))
    return runs


def test_readme_fits_on_a_few_screens():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/ (limit 250)"


def test_readme_opens_with_the_commands():
    text = README.read_text()
    assert text.startswith("# mmdeploy\n\n```bash\n"), "the README opens with its commands"
    cmds = _first_code_block(text)
    assert cmds[0].startswith('pip install torch==2.13.0 && pip install -e ".[all]" && mmdeploy export clip-shapes ')
    assert "mmdeploy bench out/clip-shapes" in cmds[0]
    assert cmds[1] == 'pip install torch==2.13.0 && pip install -e ".[all,test]" && python -m pytest -q'
    assert cmds[2] == 'python -m pytest -q -m "not slow"'


def test_readme_test_command_is_what_ci_runs():
    """CI runs the README's test command: the whole suite, either as one `python -m pytest -q` or as
    the fast tier and the slow tier (together the same suite); the fast tier is spelt as in the README;
    CI installs the extras the README's command installs."""
    readme_cmds = _first_code_block(README.read_text())
    readme_test = shlex.split(readme_cmds[1].split("&&")[-1])
    readme_fast = shlex.split(readme_cmds[2])
    ci = CI.read_text()
    runs = _pytest_runs(ci)
    assert runs, ".ci/run runs no `python -m pytest`"
    whole = readme_test in runs
    tiers = readme_fast in runs and [*readme_test, "-m", "slow"] in runs
    assert whole or tiers, (
        f"the README's test command {shlex.join(readme_test)!r} is not what .ci/run runs: {[shlex.join(r) for r in runs]}"
    )
    installs = [ln for ln in ci.splitlines() if re.search(r"pip install .*\[[^]]*\]", ln)]
    assert any({"all", "test"} <= set(re.search(r"\[([^]]*)\]", ln).group(1).split(",")) for ln in installs), (
        "CI installs the [all,test] extras the README's command installs"
    )


def test_readme_links_to_docs_pages_that_exist():
    links = re.findall(r"\]\((docs/[^)#]+)", README.read_text())
    assert links, "the README links to the docs"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links to missing docs pages: {missing}"


def _doc_commands() -> list[tuple[str, str]]:
    """(file, line) for every `mmdeploy ...` command in the README's and the docs' shell blocks,
    comments cut, continuation lines joined; `cmd1 && cmd2` gives two."""
    out = []
    for path in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s#\s", " " + line, maxsplit=1)[0]
                for part in re.split(r"&&|;|\|", line):
                    part = part.strip()
                    if part.startswith("mmdeploy "):
                        out.append((path.relative_to(ROOT).as_posix(), part))
    return out


def test_documented_commands_and_options_exist():
    """Every `mmdeploy COMMAND --option` written in the README and the docs is one the CLI has
    (the docs follow the CLI when it is restructured)."""
    typer_main = pytest.importorskip("typer.main")
    from mmdeploy.cli import app

    group = typer_main.get_command(app)
    global_opts = {o for p in group.params for o in p.opts}
    options = {
        name: {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
        for name, cmd in group.commands.items()
    }
    commands = _doc_commands()
    assert len(commands) > 50, "the docs' shell blocks were not found"
    bad = []
    for where, line in commands:
        words = line.split()[1:]
        while words and words[0] in global_opts:
            words = words[1:]
        if not words:
            continue
        name = words[0]
        if name not in options:
            bad.append(f"{where}: `{line}`: no command {name!r}")
            continue
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words[1:])):
            if opt not in options[name] and opt != "--help":
                bad.append(f"{where}: `{line}`: `mmdeploy {name}` has no {opt}")
    assert not bad, "documented commands the CLI does not have:\n" + "\n".join(bad)


def test_generated_results_are_up_to_date():
    """docs/results.md's generated section is what docs/gen_results.py renders from docs/results/*.json."""
    gen = _gen()
    stale = gen.stale({"results"})
    assert not stale, f"out of date: {stale}; run `python docs/gen_results.py`"


def test_every_results_json_says_how_it_was_made():
    for path in sorted((ROOT / "docs" / "results").glob("*.json")):
        sh = path.with_suffix(".sh")
        assert sh.is_file(), f"{path.name} has no {sh.name} with the commands that produced it"
        assert re.search(r"^# measured \d{4}-\d{2}-\d{2}", sh.read_text(), re.M), f"{sh.name}: no '# measured DATE'"


def test_generator_renders_a_report(tmp_path):
    """The renderer on a small report: rows, the busy flag, accuracy deltas."""
    gen = _gen()
    (tmp_path / "toy.json").write_text(
        '{"model": "toy", "env": {"cpu": {"model": "CPU X", "isa": ["avx512f"]}, "threads": 2,'
        ' "machine_load": {"busy": true, "why": "others used 1.5 cores"}},'
        ' "config": {"data": "shapes"},'
        ' "results": [{"component": "vision", "backend": "pytorch", "precision": "fp32", "batch": 1,'
        ' "p50_ms": 1.5, "p90_ms": 1.6, "items_per_s": 660.0, "speedup_vs_pytorch": 1.0,'
        ' "cosine_vs_pytorch": 1.0, "max_abs_diff": 0.0},'
        ' {"component": "vision", "backend": "onnxruntime", "precision": "int8", "batch": 1, "default": true,'
        ' "p50_ms": 0.5, "p90_ms": null, "items_per_s": 2000.0, "speedup_vs_pytorch": 3.0,'
        ' "cosine_vs_pytorch": 0.9993, "max_abs_diff": 0.01}],'
        ' "accuracy": [{"backend": "pytorch", "precision": "fp32", "task": "zero-shot top-1", "n": 500, "value": 0.986},'
        ' {"backend": "onnxruntime", "precision": "int8", "task": "zero-shot top-1", "n": 500, "value": 0.98}]}'
    )
    (tmp_path / "toy.sh").write_text("# measured 2026-12-06 on a test\nmmdeploy bench b --json toy.json\n")
    out = gen.render_results(tmp_path)
    assert "### toy" in out and "Measured 2026-12-06 on CPU X (avx512f), 2 threads" in out
    assert "**Busy machine** (others used 1.5 cores)" in out
    assert "| vision | ONNX Runtime int8 (default) | 1 | 0.500 | – | 2000.0 | 3.00x | 0.999300 | 1.00e-02 |" in out
    assert "| ONNX Runtime int8 | zero-shot top-1 | 500 | 98.00% | -0.6 pt |" in out
    assert (
        gen.replace_block("a\n<!-- results:begin x -->\nold\n<!-- results:end -->\n", "results", out).count("### toy")
        == 1
    )


def test_families_table_covers_the_registry():
    """The generator renders a row for every family of models.yaml (the site renders it at build time)."""
    import yaml

    families = {e["family"] for e in yaml.safe_load((ROOT / "models.yaml").read_text()).values()}
    table = _gen().render_families()
    assert {row.split("|")[1].strip() for row in table.splitlines()[2:]} == families


def test_mkdocs_build_strict(tmp_path):
    """The docs site builds with warnings as errors (broken links and anchors included)."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
