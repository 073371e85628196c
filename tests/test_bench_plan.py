"""bench's plan: what a bench would run (task x runner x batch, and what is skipped and why),
decided from the manifest alone: nothing loaded, timed or recorded."""

from __future__ import annotations

import json

import pytest

from mmdeploy.benchmarks.plan import BenchConfig, plan_bench
from mmdeploy.errors import InputError
from mmdeploy.runtimes.bundle import MANIFEST, Bundle


def test_plan_of_an_encoder_bundle_lists_every_row_and_runs_nothing(clip_bundle):
    before = (clip_bundle / MANIFEST).read_bytes()
    arts = Bundle.open(clip_bundle).artifacts
    plan = plan_bench(str(clip_bundle), BenchConfig(batches=[1, 4]))
    assert plan.kind == "encoders" and plan.task == "zero-shot"
    got = {(r.task, r.runner, r.precision, r.batch) for r in plan.rows}
    want = {(c, "pytorch", "fp32", b) for c in ("vision", "text") for b in (1, 4)}
    want |= {(a.component, a.backend, a.precision, b) for a in arts for b in (1, 4)}
    assert got == want and len(plan.rows) == len(want)
    assert {a.backend for a in arts} >= {"onnxruntime", "openvino"}
    assert all(r.skip is None for r in plan.rows if r.runner in ("onnxruntime", "openvino"))
    assert plan.default in {(a.backend, a.precision) for a in arts}
    assert (clip_bundle / MANIFEST).read_bytes() == before  # nothing recorded


def test_plan_follows_the_filters_and_refuses_what_matches_nothing(clip_bundle):
    plan = plan_bench(str(clip_bundle), BenchConfig(backends=["openvino"], precisions=["fp32"], pytorch=False))
    assert {(r.runner, r.precision, r.batch) for r in plan.rows} == {("openvino", "fp32", 1)}
    with pytest.raises(InputError, match="no variant matching the filters"):
        plan_bench(str(clip_bundle), BenchConfig(backends=["tensorrt"]))
    with pytest.raises(InputError, match="--batch 0"):
        plan_bench(str(clip_bundle), BenchConfig(batches=[1, 0]))


def test_bench_plan_command_prints_and_writes_the_plan(clip_bundle, cli_inprocess, tmp_path):
    out = tmp_path / "plan.json"
    r = cli_inprocess(
        "bench", str(clip_bundle), "--plan", "--backend", "onnxruntime", "--batch", "1,2", "--json", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert "bench plan: clip-shapes" in r.stdout and "rows run here" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["kind"] == "encoders" and {row["runner"] for row in doc["rows"]} == {"pytorch", "onnxruntime"}
    assert {row["batch"] for row in doc["rows"]} == {1, 2}
