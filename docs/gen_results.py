"""Render the generated parts of the docs; never edit them by hand.

- docs/results.md, between `<!-- results:begin ... -->` and `<!-- results:end -->`: one section per
  bench report `docs/results/NAME.json` (written by `mmdeploy bench ... --json`), with the commands
  that produced it from `docs/results/NAME.sh` beside it.
- README.md and docs/families.md, between `<!-- families:begin ... -->` and `<!-- families:end -->`:
  the families table, from models.yaml (and the config.json of shipped checkpoints).

    python docs/gen_results.py           # rewrite every generated block
    python docs/gen_results.py --check   # exit 1 naming the blocks that are out of date

Standard library + PyYAML only (PyYAML is a core dependency of mmdeploy and of mkdocs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS_DIR = DOCS / "results"

# what each family does, for the families table; a family without a line here gets an empty cell
# (adding a family needs no edit here: its row appears from models.yaml)
TASKS = {
    "clip": "image + text embeddings, zero-shot classify",
    "siglip": "image + text embeddings, sigmoid zero-shot classify",
    "align": "image + text embeddings, zero-shot classify",
    "text-embedding": "sentence embeddings",
    "caption": "image captioning (greedy, beam)",
    "vqa": "visual question answering",
    "vlm": "multi-turn visual chat (SmolVLM, Idefics3)",
}
BACKEND_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT"}


# ---------------------------------------------------------------------------------------- blocks


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the lines between `<!-- NAME:begin ...-->` and `<!-- NAME:end -->` set to `body`."""
    pattern = re.compile(rf"(<!-- {name}:begin[^\n]*-->\n)(.*?)(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def read_block(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:begin[^\n]*-->\n(.*?)<!-- {name}:end -->", text, re.S)
    if not m:
        raise ValueError(f"no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return m.group(1)


# -------------------------------------------------------------------------------------- families


def _architectures(name: str, entry: dict) -> list[str]:
    """The checkpoint classes of one registry model: its inline config, a shipped folder's
    config.json, or an installed package's (absent package: none)."""
    if archs := (entry.get("config") or {}).get("architectures"):
        return list(archs)
    folder = None
    if entry.get("path"):
        folder = ROOT / entry["path"]
    elif entry.get("package"):
        spec = importlib.util.find_spec(entry["package"])
        if spec and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations))) / entry.get("subdir", "")
    cfg = folder / "config.json" if folder else None
    if cfg and cfg.is_file():
        return list(json.loads(cfg.read_text()).get("architectures") or [])
    return []


def render_families(models_yaml: Path = ROOT / "models.yaml") -> str:
    reg = yaml.safe_load(models_yaml.read_text())
    fams: dict[str, dict] = {}
    for name, entry in reg.items():
        f = fams.setdefault(entry["family"], {"models": [], "archs": set()})
        shipped = bool(entry.get("path"))
        f["models"].append((not shipped, name, f"**{name}**" if shipped else name))
        f["archs"].update(_architectures(name, entry))
    lines = [
        "| family | what it does | checkpoint classes | registry models (shipped fixtures in bold) |",
        "| --- | --- | --- | --- |",
    ]
    for fam, f in fams.items():
        archs = ", ".join(f"`{a}`" for a in sorted(f["archs"])) or "–"
        models = ", ".join(label for *_, label in sorted(f["models"]))
        lines.append(f"| {fam} | {TASKS.get(fam, '')} | {archs} | {models} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- results


def _num(v, spec: str, suffix: str = "") -> str:
    return "–" if v is None else format(v, spec) + suffix


def _variant(row: dict) -> str:
    return f"{BACKEND_NAMES.get(row['backend'], row['backend'])} {row['precision']}"


def _commands(json_path: Path) -> str:
    sh = json_path.with_suffix(".sh")
    if not sh.is_file():
        raise FileNotFoundError(f"{sh.relative_to(ROOT)}: the commands that produced {json_path.name} are missing")
    return sh.read_text().strip()


def render_report(path: Path) -> str:
    report = json.loads(path.read_text())
    env = report.get("env", {})
    cpu = env.get("cpu", {})
    load = env.get("machine_load") or {}
    commands = _commands(path)
    date = re.search(r"^# measured (\S+)", commands, re.M)
    versions = env.get("versions") or env.get("libraries") or {}
    out = [f"### {report.get('model', path.stem)}", ""]
    where = (
        f"Measured {date.group(1) if date else '(date not recorded)'} on {cpu.get('model', 'an unknown CPU')}"
        f" ({', '.join(cpu.get('isa') or []) or 'no AVX-512'}), {env.get('threads') or 'all'} threads"
    )
    if load.get("busy"):
        where += f". **Busy machine** ({load.get('why', 'others used the CPU')}): timings unreliable, read no speedup from this table"
    out += [where + ".", ""]
    if versions:
        out += ["Libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v) + ".", ""]
    out += [f"From `docs/results/{path.name}`, produced by `docs/results/{path.stem}.sh`:", ""]
    out += ["```bash", commands, "```", ""]
    out += [
        "| component | variant | batch | p50 ms | p90 ms | items/s | speedup vs PyTorch | cosine vs PyTorch | max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.get("results", []):
        star = " (default)" if r.get("default") else ""
        out.append(
            f"| {r['component']} | {_variant(r)}{star} | {r['batch']} | {_num(r.get('p50_ms'), '.3f')} "
            f"| {_num(r.get('p90_ms'), '.3f')} | {_num(r.get('items_per_s'), '.1f')} "
            f"| {_num(r.get('speedup_vs_pytorch'), '.2f', 'x')} | {_num(r.get('cosine_vs_pytorch'), '.6f')} "
            f"| {_num(r.get('max_abs_diff'), '.2e')} |"
        )
    acc = report.get("accuracy") or []
    if acc:
        ref = {a["task"]: a["value"] for a in acc if a["backend"] == "pytorch"}
        data = (report.get("config") or {}).get("data")
        out += ["", f"Task accuracy{f' on {data}' if data else ''}:", ""]
        out += ["| variant | task | n | value | vs PyTorch |", "| --- | --- | --- | --- | --- |"]
        for a in acc:
            if "Spearman" in a["task"]:
                value, delta = f"{a['value']:.4f}", "–"
            else:
                value = f"{a['value']:.2%}"
                r = ref.get(a["task"])
                delta = "–" if r is None or a["backend"] == "pytorch" else f"{(a['value'] - r) * 100:+.1f} pt"
            out.append(f"| {_variant(a)} | {a['task']} | {a.get('n', '–')} | {value} | {delta} |")
    return "\n".join(out) + "\n"


def render_results(results_dir: Path = RESULTS_DIR) -> str:
    reports = sorted(results_dir.glob("*.json"))
    if not reports:
        return "(no bench JSON in docs/results/ yet)\n"
    return "\n".join(render_report(p) for p in reports)


# ------------------------------------------------------------------------------------------ main

# (file, block name, renderer)
TARGETS = [
    (DOCS / "results.md", "results", render_results),
    (DOCS / "families.md", "families", render_families),
    (ROOT / "README.md", "families", render_families),
]


def stale(names: set[str] | None = None) -> list[str]:
    """The generated blocks whose text differs from what the sources render now."""
    out = []
    for path, name, render in TARGETS:
        if names is not None and name not in names:
            continue
        if read_block(path.read_text(), name) != render():
            out.append(f"{path.relative_to(ROOT)}: {name}")
    return out


def write() -> list[str]:
    changed = []
    for path, name, render in TARGETS:
        text = path.read_text()
        new = replace_block(text, name, render())
        if new != text:
            path.write_text(new)
            changed.append(f"{path.relative_to(ROOT)}: {name}")
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated block is out of date")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for b in bad:
            print(f"out of date: {b} (run: python docs/gen_results.py)", file=sys.stderr)
        return 1 if bad else 0
    for c in write():
        print(f"rewrote {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
