"""A bundle, as `mmdeploy info` (and export / quantize / build after writing one) shows it.

`render_info(bundle)` returns Rich renderables (markup strings and a table); the caller prints
them on its console. Read from the Bundle's public face: name, family, root, components,
artifacts, and the manifest's documented fields (runtimes/manifest.py).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import MMDeployError
from .bundle import Bundle
from .select import measured_latency, select_variant


def fold_layers(specs: list[dict]) -> list[dict]:
    """past.0.key ... past.11.value (same shape) -> one entry past.{0..11}.key|value."""
    out, groups = [], {}
    for sp in specs:
        m = re.fullmatch(r"(\w+)\.(\d+)\.(key|value)", sp["name"])
        if not m:
            out.append(sp)
            continue
        key = (m.group(1), str(sp["shape"]))
        if key not in groups:
            groups[key] = {**sp, "layers": []}
            out.append(groups[key])
        groups[key]["layers"].append(int(m.group(2)))
    for (prefix, _), g in groups.items():
        g["name"] = f"{prefix}.{{{min(g['layers'])}..{max(g['layers'])}}}.key|value"
    return out


def render_info(b: Bundle) -> list[Any]:
    """Source, components with their inputs and outputs, every variant with its parity and gate,
    what `--mode best` chose, the latencies measured on this machine and the default variant here."""
    from rich.table import Table

    m = b.manifest
    src = b.source
    out: list[Any] = [
        f"[bold]{b.name}[/bold] ({b.family})  bundle {b.root}  schema v{b.schema_version}",
        f"source: {src.get('path') or src.get('hub') or src.get('registry')}"
        f"{'  (random weights, seed {})'.format(src.get('seed')) if src.get('random_weights') else ''}"
        f"  weights sha256 {str(src.get('weights_sha256'))[:12]}",
    ]
    for name, comp in b.components.items():
        ins = ", ".join(f"{i['name']}{i['shape']}:{i['dtype']}" for i in fold_layers(comp["inputs"]))
        outs = ", ".join(f"{o['name']}{o['shape']}" for o in fold_layers(comp["outputs"]))
        out.append(f"  {name}: {ins} -> {outs}")
    t = Table(
        "component",
        "backend",
        "precision",
        "file",
        "MB",
        "cosine min",
        "cosine mean",
        "max|diff|",
        "gate",
        caption="fp32/bf16: vs PyTorch at export; quantized: vs fp32 on held-out inputs. gate: on the min (worst) or mean cosine, as named.",
    )
    nan = float("nan")
    for a in b.artifacts:
        size = b.file_bytes(a.files) / 1e6
        metric = a.gate.get("metric", "cosine").replace("cosine_mean", "mean").replace("cosine", "min")
        t.add_row(
            a.component,
            a.backend,
            a.precision,
            a.path,
            f"{size:.1f}",
            f"{a.parity.get('cosine', nan):.6f}",
            f"{a.parity.get('cosine_mean', nan):.6f}",
            f"{a.parity.get('max_abs_diff', nan):.2e}",
            f"{'pass' if a.passed else 'FAIL'} ({metric} ≥{a.gate.get('min_cosine')}"
            + (
                f", tokens {a.gate['agreement']:.0%} ≥{a.gate['min_agreement']:.0%}"
                if "min_agreement" in a.gate
                else ""
            )
            + ")",
        )
    out.append(t)
    for a in b.artifacts:  # --mode best: which candidate won here, and of how many
        if (ch := a.recipe.get("chosen")) and ch.get("winner"):
            won = next(r for r in ch["candidates"] if r["candidate"] == ch["winner"])
            out.append(
                f"{a.component} {a.backend}/{a.precision}: {ch['winner']} - {ch['why']} "
                f"({won['vs_fp32']:.2f}x fp32's time, {won['ms']:.2f} ms at batch 1 when chosen)"
            )
    if "compress" in m:
        out.append(compress_table(m["compress"]))
    measured = measured_latency(b)
    if measured:
        out.append(
            "batch-1 latency measured here: "
            + ", ".join(f"{'/'.join(k)} {v:.2f} ms" for k, v in sorted(measured.items(), key=lambda kv: kv[1]))
        )
    try:
        out.append("default variant here: " + "/".join(select_variant(b)))
    except MMDeployError as exc:
        out.append(f"default variant here: none ({exc})")
    return out


def compress_table(rec: dict[str, Any]):
    """The `compress` search: every candidate fastest first, the Pareto front and the pick marked."""
    from rich.markup import escape
    from rich.table import Table

    base = rec["baseline"]
    t = Table(
        "candidate",
        "layers",
        "MLP",
        "heads",
        "top-1",
        "drop (pt)",
        "ms (b1)",
        "MB",
        "front",
        "status",
        title=f"compress: {len(rec['candidates'])} candidates, the fastest within {rec['max_drop']:g} points of "
        f"{base['candidate']}'s top-1 {base['top1']:.2%}"
        + (f" and {rec['budget_ms']:g} ms" if "budget_ms" in rec else ""),
        caption=f"timed on {escape(rec['machine'])}; ms: batch 1, summed over components"
        + (f"; busy machine: {rec['machine_load']['why']}" if rec.get("machine_load", {}).get("busy") else ""),
    )
    for r in sorted(rec["candidates"], key=lambda r: r["ms"]):
        made = r["made"]
        t.add_row(
            escape(r["id"]),
            "/".join(str(v) for v in made.get("layers", {}).values()) or "teacher",
            "/".join(str(v) for v in made.get("mlp", {}).values()) or "teacher",
            "/".join(str(v) for v in made.get("attention_heads", {}).values()) or "-",
            f"{r['top1']:.2%}",
            f"{r['drop_points']:.2f}",
            f"{r['ms']:.3f}",
            f"{r['mb']:.2f}",
            "*" if r["on_front"] else "",
            "[bold]chosen[/bold]"
            if r["id"] == rec["chosen"]
            else ("pass" if r["passed"] else escape(r.get("why_not", ""))),
        )
    return t
