"""Every command's happy path on the fixture, and bad input -> one line, exit code 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmdeploy.cli import app
from mmdeploy.common.datasets import shapes

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    # progress lines start with "·"; the error itself is one line
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("·")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def red_circle(tmp_path_factory):
    s = next(s for s in shapes.generate("test", 200) if shapes.label_of(s) == "red circle")
    p = tmp_path_factory.mktemp("img") / "red_circle.png"
    s.image.save(p)
    return p


def test_models_lists_the_registry():
    r = run("models")
    assert r.exit_code == 0
    for name in ("clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "clip-shapes"):
        assert name in r.stdout


def test_export_onnxruntime_only(tmp_path):
    out = tmp_path / "b"
    r = run("export", "clip-shapes", "-o", out, "--backend", "onnxruntime")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert {(a["component"], a["backend"], a["precision"]) for a in m["artifacts"]} == {
        ("vision", "onnxruntime", "fp32"),
        ("text", "onnxruntime", "fp32"),
    }


def test_info(clip_bundle):
    r = run("info", clip_bundle)
    assert r.exit_code == 0, r.output
    assert "default variant here" in r.stdout and "vision" in r.stdout
    r = run("info", clip_bundle, "--json")
    assert json.loads(r.stdout)["schema_version"] == 1


def test_embed_and_classify(clip_bundle, red_circle):
    r = run(
        "embed",
        clip_bundle,
        "--image",
        red_circle,
        "--text",
        "a photo of a red circle",
        "--text",
        "a photo of a blue star",
    )
    assert r.exit_code == 0, r.output
    sims = [float(x) for x in r.stdout.strip().splitlines()[-1].split()[-2:]]
    assert sims[0] > sims[1]
    r = run("embed", clip_bundle, "--text", "a", "--full", "--backend", "onnxruntime")
    assert len(json.loads(r.stdout)["texts"]["a"]) > 8
    labels = ",".join(shapes.labels())
    r = run("classify", clip_bundle, red_circle, "--labels", labels, "--template", "a photo of a {}", "--top", "1")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().endswith("red circle")


def test_bench_writes_json_and_plot(clip_bundle, tmp_path):
    j, png = tmp_path / "r.json", tmp_path / "r.png"
    r = run(
        "bench",
        clip_bundle,
        "--batch",
        "1,2",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--threads",
        "2",
        "--json",
        j,
        "--plot",
        png,
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(j.read_text())
    assert rep["env"]["cpu"]["model"] and "isa" in rep["env"]["cpu"]
    rows = rep["results"]
    keys = {
        "component",
        "backend",
        "precision",
        "batch",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "items_per_s",
        "speedup_vs_pytorch",
        "cosine_vs_pytorch",
        "max_abs_diff",
    }
    assert all(keys <= set(r) for r in rows)
    assert {(r["component"], r["batch"]) for r in rows if r["backend"] == "pytorch"} == {
        (c, b) for c in ("vision", "text") for b in (1, 2)
    }
    for r in rows:
        if r["backend"] != "pytorch":
            assert r["cosine_vs_pytorch"] >= (0.9999 if r["precision"] == "fp32" else 0.99)
            assert r["speedup_vs_pytorch"] > 0
    assert sum(bool(r.get("default")) for r in rows) == 4  # one variant x 2 components x 2 batches
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_doctor():
    r = run("doctor")
    assert r.exit_code == 0 and "onnxruntime: ok" in r.stdout and "cpu:" in r.stdout


def test_missing_folder(tmp_path):
    one_line_error(run("export", tmp_path / "nope", "-o", tmp_path / "o"), "checkpoint not found")
    one_line_error(run("export", "no-such-model", "-o", tmp_path / "o"), "no-such-model")
    assert not (tmp_path / "o").exists()


def test_non_clip_checkpoint(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])).save_pretrained(tmp_path / "resnet")
    one_line_error(
        run("export", tmp_path / "resnet", "-o", tmp_path / "o"), "unsupported architecture 'ResNetModel'", "CLIPModel"
    )
    assert not (tmp_path / "o").exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "ck").mkdir()
    one_line_error(run("export", tmp_path / "ck", "-o", tmp_path / "o"), "config.json is missing")


def test_bad_flags(tmp_path, clip_bundle, red_circle):
    one_line_error(
        run("export", "clip-shapes", "-o", tmp_path / "o", "--backend", "tensorflow"), "unknown backend 'tensorflow'"
    )
    one_line_error(run("export", "clip-shapes", "-o", tmp_path / "o", "--precision", "fp8"), "unknown precision 'fp8'")
    one_line_error(
        run("export", "clip-shapes", "-o", tmp_path / "o", "--backend", "onnxruntime", "--precision", "bf16"), "bf16"
    )
    one_line_error(run("export", "clip-shapes", "-o", tmp_path / "o", "--target", "tpu"), "target 'tpu'")
    one_line_error(run("bench", clip_bundle, "--batch", "1,x"), "--batch")
    one_line_error(run("bench", tmp_path / "nothing"), "bundle not found")
    one_line_error(run("classify", clip_bundle, red_circle, "--labels", "one"), "at least two labels")
    one_line_error(run("embed", clip_bundle), "--image")
    assert not (tmp_path / "o").exists()


def test_unreadable_image(tmp_path, clip_bundle):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    one_line_error(run("classify", clip_bundle, bad, "--labels", "a,b"), "bad.jpg")
    one_line_error(run("embed", clip_bundle, "--image", tmp_path / "missing.png"), "missing.png")


def test_bad_bundle_config_is_one_line_exit_2(tmp_path, clip_bundle):
    import shutil

    from mmdeploy.runtimes.bundle import sha256_file

    dst = tmp_path / "b"
    shutil.copytree(clip_bundle, dst)
    m = json.loads((dst / "manifest.json").read_text())
    size = m["preprocess"]["config"]["size"]
    m["preprocess"]["config"]["size"] = {"shortest_edge": 0}
    (dst / "manifest.json").write_text(json.dumps(m))
    one_line_error(run("embed", dst, "--text", "a"), "manifest preprocess.config", "size values must be positive")
    m["preprocess"]["config"]["size"] = size
    tok = dst / "tokenizer.json"
    tok.write_text("{not json")
    m["files"]["tokenizer.json"].update(sha256=sha256_file(tok), bytes=tok.stat().st_size)
    (dst / "manifest.json").write_text(json.dumps(m))
    one_line_error(run("embed", dst, "--text", "a"), "cannot read tokenizer file", "tokenizer.json")


def test_odd_image_modes_work_end_to_end(tmp_path, clip_bundle):
    base = shapes.generate("test", 1)[0].image
    for mode in ("RGBA", "L", "P", "CMYK", "I;16"):
        p = tmp_path / f"x_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        base.convert(mode if mode != "I;16" else "L").convert(mode).save(p) if mode != "I;16" else Image.fromarray(
            __import__("numpy").asarray(base.convert("L")).astype("uint16") * 257
        ).save(p)
        r = run("embed", clip_bundle, "--image", p)
        assert r.exit_code == 0, (mode, r.output)


def test_debug_shows_traceback(tmp_path):
    r = runner.invoke(app, ["--debug", "export", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and r.exception is not None


def test_accuracy_table_compares_each_task_with_its_own_reference():
    """Caption bundles report two tasks: each row's delta is against PyTorch on the same task."""
    from rich.console import Console

    from mmdeploy.benchmarks.report import accuracy_table

    rows = [
        ("pytorch", "caption exact match", 0.825),
        ("pytorch", "caption BLEU-4", 0.9213),
        ("onnxruntime", "caption exact match", 0.82),
        ("onnxruntime", "caption BLEU-4", 0.9191),
    ]
    report = {
        "config": {"data": "shapes/test"},
        "accuracy": [
            {"backend": b, "precision": "fp32" if b == "pytorch" else "int8", "task": t, "n": 200, "value": v}
            for b, t, v in rows
        ],
    }
    console = Console(width=120, record=True)
    console.print(accuracy_table(report))
    text = console.export_text()
    assert "-0.5 pt" in text and "-0.2 pt" in text and "+9" not in text, text
