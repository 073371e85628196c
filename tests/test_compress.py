"""`mmdeploy compress` (issue 34): the Pareto front and the pick, the search on a tiny space, resume, errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from mmdeploy.errors import BundleError
from mmdeploy.exporter.compress import CompressConfig, Student, compress, dominates, fit_budget, pareto_front, pick

from .conftest import TRAIN_THREADS


def _row(cid, top1, ms, gate=True):
    return {"id": cid, "top1": top1, "ms": ms, "gate_passed": gate}


def test_front_and_pick_on_hand_made_candidates():
    rows = [
        _row("teacher/fp32", 0.990, 1.00),
        _row("teacher/int8", 0.986, 0.60),
        _row("half/fp32", 0.984, 0.55),
        _row("half/int8", 0.950, 0.30),  # fastest, 4 points down
        _row("wide-slow", 0.980, 1.20),  # dominated by teacher/fp32
        _row("slow-int8", 0.970, 0.70),  # dominated by teacher/int8
        _row("half/int8-bad-gate", 0.983, 0.40, gate=False),  # on the front, never picked
        _row("tie-twin", 0.984, 0.55),  # same figures as half/fp32: neither dominates
    ]
    front = [rows[i]["id"] for i in pareto_front(rows)]
    assert front == ["half/int8", "half/int8-bad-gate", "half/fp32", "tie-twin", "teacher/int8", "teacher/fp32"]
    for i in pareto_front(rows):
        assert not any(dominates(o, rows[i]) for o in rows)
    assert dominates(rows[0], rows[4]) and dominates(rows[1], rows[5])

    base = rows[0]["top1"]
    # within 1 point: the fastest that passed its gate (the bad-gate row is faster but out)
    assert rows[pick(rows, base, 1.0)]["id"] == "half/fp32"
    assert rows[pick(rows, base, 5.0)]["id"] == "half/int8"
    assert rows[pick(rows, base, 0.0)]["id"] == "teacher/fp32"
    assert rows[pick(rows, base, 1.0, budget_ms=0.6)]["id"] == "half/fp32"
    assert pick(rows, base, 1.0, budget_ms=0.5) is None  # within the floor, nothing runs in 0.5 ms
    # a tie on latency goes to the more accurate
    tie = [_row("a", 0.97, 0.5), _row("b", 0.98, 0.5), _row("base", 0.99, 0.9)]
    assert tie[pick(tie, 0.99, 2.0)]["id"] == "b"


def test_budget_leaves_out_the_costliest_students_to_train_first():
    teacher, half, narrow, both = Student(), Student(0.5, 1.0), Student(1.0, 0.5), Student(0.5, 0.5)
    students = [teacher, narrow, half, both]

    def minutes(s, t, e):  # 1 min for the teacher's variants, 10 per student to train, 2 per export
        return 1 + 10 * len(t) + 2 * len(e)

    kept, train, export, dropped, m = fit_budget(students, [narrow, half, both], students, 20, minutes)
    assert dropped == ["depth1-width0.5", "depth0.5-width1"] and kept == [teacher, both]
    assert train == [both] and export == [teacher, both] and m == 15
    assert fit_budget(students, [narrow, half, both], students, None, minutes)[3] == []
    # nothing left to train and still over: the caller refuses
    kept, train, _, dropped, m = fit_budget(students, [narrow, half, both], students, 2, minutes)
    assert train == [] and kept == [teacher] and m == 3


def test_heads_axis_is_one_student_at_full_depth_trained_as_prune_trains_a_cut_residual():
    """The default space: depth x width, plus heads 0.5 at full depth and the narrowest width, pruned
    in the image tower and recovered with prune's 16 epochs of 16384 (256 steps leave ~80%)."""
    from mmdeploy.exporter.compress import _prune_config, _pruned

    cfg = CompressConfig()
    students = cfg.students()
    assert [s.key for s in students] == [
        "depth1-width1",
        "depth1-width0.5",
        "depth1-width0.25",
        "depth0.5-width1",
        "depth0.5-width0.5",
        "depth0.5-width0.25",
        "depth1-width0.25-heads0.5",
    ]
    heads = students[-1]
    assert _pruned(heads) and not heads.is_teacher and Student().is_teacher
    prune_cfg = _prune_config(heads, cfg)
    assert (prune_cfg.heads, prune_cfg.mlp, prune_cfg.towers) == (0.5, 0.25, ("vision",))
    assert prune_cfg.epochs is None and prune_cfg.samples == 16384  # prune resolves 16 epochs for this cut
    assert cfg.steps(heads) == 4096 and cfg.steps(students[1]) == 256
    quick = CompressConfig(heads_epochs=1, samples=256)
    assert quick.steps(heads) == 4 and _prune_config(heads, quick).epochs == 1
    assert [s.key for s in CompressConfig(heads=(1.0,)).students()][-1] == "depth0.5-width0.25"
    assert CompressConfig(widths=(1.0, 0.5)).students()[-1] == Student(1.0, 0.5, 0.5)


def test_training_estimate_counts_the_text_tower_only_where_it_trains():
    """An MLP cut narrows both towers (the text tower trains); depth and heads cuts keep the teacher's
    text tower, whose embeddings are computed once, so their steps cost the image side alone."""
    cfg = CompressConfig()
    step = (1.0, 3.0)  # seconds of a full-size image step, text step
    mlp, depth, heads = Student(1.0, 0.25), Student(0.5, 1.0), Student(1.0, 0.25, 0.5)
    assert [cfg.trains_text(s) for s in (mlp, depth, heads)] == [True, False, False]
    assert cfg.train_seconds(depth, step) == 256 * (0.15 + 0.5)
    assert cfg.train_seconds(heads, step) == 4096 * (0.15 + 0.25)
    assert cfg.train_seconds(mlp, step) == 256 * ((0.15 + 0.5) + 3.0 * (0.15 + 0.5))


def test_heads_axis_follows_what_the_family_pruner_declares():
    from mmdeploy.exporter.compress import check_source, heads_axis_supported

    assert heads_axis_supported(check_source("clip-shapes"))
    assert not heads_axis_supported(check_source("siglip-shapes"))  # SigLIP's embedding is its hidden state


def test_students_a_family_cannot_make_are_left_out_by_what_it_declares():
    """SigLIP prunes MLPs but has no distiller and cannot drop heads: only its width students stay."""
    from mmdeploy.exporter.compress import unmakeable

    students = CompressConfig().students()
    kept = [s.key for s in students if unmakeable(s, "siglip") is None]
    assert kept == ["depth1-width1", "depth1-width0.5", "depth1-width0.25"]
    assert "cannot distill" in unmakeable(Student(0.5, 1.0), "siglip")
    assert "attention heads" in unmakeable(Student(1.0, 0.25, 0.5), "siglip")
    assert all(unmakeable(s, "clip") is None for s in students)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, says",
    [
        (["clip-shapes", "--max-drop", "-1"], "--max-drop -1"),
        (["clip-shapes", "--depth", "0,1"], "--depth 0"),
        (["clip-shapes", "--heads", "1,1.5"], "--heads 1.5"),
        (["clip-shapes", "--budget-ms", "0"], "--budget-ms 0"),
        (["align-shapes"], "cannot be compressed"),
        # the estimate behind --budget-min times a training step of the teacher (16 s CPU measured beside load)
        pytest.param(
            ["clip-shapes", "--budget-min", "0.01", "--backend", "onnxruntime"],
            "--budget-min 0.01",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli_inprocess, tmp_path, args, says):
    out = tmp_path / "out"
    r = cli_inprocess("compress", *args, "-o", str(out))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], r.stderr  # after the teacher's loading line for --budget-min
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its cache


def test_data_without_labels_is_refused(cli_inprocess, tmp_path):
    images = tmp_path / "unlabelled"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 80, 0, 0)).save(images / f"{i}.png")
    r = cli_inprocess("compress", "clip-shapes", "-o", str(tmp_path / "out"), "--data", str(images))
    assert r.returncode == 2 and "labelled images" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unlabelled"]


@pytest.mark.slow
def test_manifest_refuses_a_compress_record_that_does_not_hold_together(compressed):
    from mmdeploy.runtimes.manifest import validate_manifest

    out, _, _ = compressed
    m = json.loads((out / "manifest.json").read_text())
    validate_manifest(m, "ok")
    bad = copy.deepcopy(m)
    bad["compress"]["chosen"] = "nobody"
    with pytest.raises(BundleError, match="compress.chosen"):
        validate_manifest(bad, "bad")
    bad = copy.deepcopy(m)
    bad["compress"]["candidates"][0]["top1"] = 1.5
    with pytest.raises(BundleError, match=r"compress.candidates\[0\].top1"):
        validate_manifest(bad, "bad")


# --------------------------------------------------------------------------- the search


TINY = dict(
    depths=(1.0, 0.5),
    widths=(1.0,),
    heads=(1.0,),
    precisions=("fp32", "int8"),
    backends=("onnxruntime",),
    epochs=1,
    samples=256,
    eval_images=200,
    timing_seconds=0.3,
    threads=TRAIN_THREADS,
)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """clip-shapes searched over 2 students (the teacher, half its image layers) x fp32/int8 on ORT."""
    out = tmp_path_factory.mktemp("compress") / "clip-best"
    logs: list[str] = []
    record = compress("clip-shapes", out, CompressConfig(max_drop=1.0, **TINY), log=logs.append)
    return out, record, logs


@pytest.mark.slow
def test_search_keeps_the_front_and_the_fastest_within_the_floor(compressed):
    from mmdeploy.runtimes import load
    from mmdeploy.runtimes.bundle import Bundle
    from mmdeploy.runtimes.select import select_variant

    out, record, logs = compressed
    rows = record["candidates"]
    assert {r["id"] for r in rows} == {
        f"{s}/onnxruntime/{p}" for s in ("depth1-width1", "depth0.5-width1") for p in ("fp32", "int8")
    }
    front = [r for r in rows if r["id"] in record["front"]]
    assert front and all(r["on_front"] for r in front)
    for r in front:
        assert not any(dominates(o, r) for o in rows), r["id"]
    for r in rows:
        if r["id"] not in record["front"]:
            assert any(dominates(o, r) for o in rows), r["id"]

    chosen = next(r for r in rows if r["id"] == record["chosen"])
    base = record["baseline"]["top1"]
    assert (base - chosen["top1"]) * 100 <= 1.0 + 1e-9 and chosen["gate_passed"]
    passing = [r for r in rows if r["gate_passed"] and (base - r["top1"]) * 100 <= 1.0 + 1e-9]
    assert chosen["ms"] == min(r["ms"] for r in passing)
    student = next(r for r in rows if r["student"] == "depth0.5-width1")["made"]
    assert student["layers"]["vision"] == 2 and student["by"].startswith("distill")

    b = Bundle.open(out)  # validated against the schema on open
    assert b.manifest["compress"]["chosen"] == record["chosen"]
    want = (chosen["backend"], chosen["precision"])
    assert select_variant(b) == want
    pipe = load(out)
    assert (pipe.backend, pipe.precision) == want
    cache = out.parent / "clip-best.compress-cache"
    assert (cache / "bundles" / chosen["student"] / "manifest.json").is_file()
    assert any("training the student" in line for line in logs)


@pytest.mark.slow
def test_rerun_reuses_the_cached_students_and_bundles(compressed):
    out, first, _ = compressed
    cache = out.parent / "clip-best.compress-cache"
    weights = cache / "students" / "depth0.5-width1" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    logs: list[str] = []
    again = compress("clip-shapes", out, CompressConfig(max_drop=1.0, **TINY), log=logs.append)
    assert weights.stat().st_mtime_ns == stamp
    assert not any("training the student" in line for line in logs), logs
    assert any("student cached" in line for line in logs) and any("bundle cached" in line for line in logs)
    assert not any("ONNX exported" in line for line in logs)
    # the same figures (scores are cached); only the timing is measured again
    assert {r["id"]: r["top1"] for r in again["candidates"]} == {r["id"]: r["top1"] for r in first["candidates"]}


@pytest.mark.slow
def test_siglip_searches_mlp_width_with_its_pruners_recovery(tmp_path):
    """SigLIP has no distiller: the default depth and heads axes are left out by declaration and its
    MLP students recover through its pruner's declared recovery (before, prune refused them mid-search)."""
    out, logs = tmp_path / "siglip-best", []
    cfg = CompressConfig(**{**TINY, "depths": (1.0, 0.5), "widths": (1.0, 0.5), "heads": (1.0, 0.5)})
    record = compress("siglip-shapes", out, cfg, log=logs.append)
    assert {r["id"] for r in record["candidates"]} == {
        f"depth1-width{w}/onnxruntime/{p}" for w in ("1", "0.5") for p in ("fp32", "int8")
    }
    made = next(r for r in record["candidates"] if r["student"] == "depth1-width0.5")["made"]
    assert made["by"].startswith("prune") and made["mlp"]["vision"] == 256
    assert any("cannot distill" in line for line in logs) and any("attention heads" in line for line in logs)
