"""Distillation (issue 9): students of clip-shapes / caption-shapes, resume, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmdeploy.cli import app
from mmdeploy.exporter.distill import DistillConfig, distill, evenly_spaced
from tools.fixtures.dual_encoders import zero_shot_top1

from .conftest import TRAIN_THREADS

runner = CliRunner()
# issue 9: half the vision layers keeps >= 95% of the teacher's zero-shot top-1
MIN_TOP1_KEPT = 0.95


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def clip_student(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("students") / "clip-2l"
    r = cli("distill", "clip-shapes", "-o", out, "--vision-layers", 2, "--threads", TRAIN_THREADS)
    assert r.exit_code == 0, r.output
    return out


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(4, 2) == [0, 3]
    assert evenly_spaced(12, 6) == [0, 2, 4, 7, 9, 11]
    assert evenly_spaced(4, 1) == [3]
    assert evenly_spaced(3, 3) == [0, 1, 2]


@pytest.mark.slow  # clip_student: a full distillation (152 s of setup in the last CI)
def test_half_depth_student_keeps_zero_shot_accuracy(clip_student):
    from transformers import CLIPModel

    from mmdeploy.exporter.registry import package_path

    student = CLIPModel.from_pretrained(clip_student)
    assert student.config.vision_config.num_hidden_layers == 2
    assert student.config.text_config.num_hidden_layers == 2
    # measured independently of the distiller, with the plain HF classes on the 500 test images
    teacher_top1 = zero_shot_top1(package_path("fixtures/clip-shapes"))
    student_top1 = zero_shot_top1(clip_student)
    assert student_top1 >= MIN_TOP1_KEPT * teacher_top1, (student_top1, teacher_top1)
    report = json.loads((clip_student / "distill.json").read_text())
    assert report["fidelity"]["student_top1"] == pytest.approx(student_top1, abs=0.002)
    assert report["student"]["towers"]["vision"]["kept_layers"] == [0, 3]
    assert report["student"]["towers"]["text"]["trained"] is False
    assert (clip_student / "README.md").read_text().startswith("# Distilled student of clip-shapes")
    assert not (clip_student.parent / "clip-2l.distill-state").exists()


@pytest.mark.slow  # clip_student: a full distillation (152 s of setup in the last CI)
def test_student_exports_runs_and_benches_against_teacher(clip_student, tmp_path):
    from mmdeploy.benchmarks.bench import BenchConfig, bench
    from mmdeploy.common.datasets.shapes import generate, label_of, labels
    from mmdeploy.runtimes import load

    out = tmp_path / "bundle"
    r = cli("export", clip_student, "-o", out, "--backend", "onnxruntime", "--threads", 2)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["distilled_from"]["registry"] == "clip-shapes"

    pipe = load(out)
    samples = generate("test", 24)
    ranked = pipe.classify_batch([s.image for s in samples], labels(), template="a photo of a {}")
    pred = [r[0][0] for r in ranked]
    assert np.mean([p == label_of(s) for p, s in zip(pred, samples)]) >= 0.8

    rep = bench(str(out), BenchConfig(runs=2, warmup=1, data="shapes", threads=2, record=False), log=lambda m: None)
    backends = {(r["component"], r["backend"]) for r in rep["results"]}
    assert ("vision", "teacher") in backends and ("vision", "onnxruntime") in backends
    ort = next(r for r in rep["results"] if r["component"] == "vision" and r["backend"] == "onnxruntime")
    assert ort["speedup_vs_teacher"] > 0 and ort["cosine_vs_teacher"] > 0.9
    acc = {a["backend"]: a["value"] for a in rep["accuracy"]}
    assert {"teacher", "pytorch", "onnxruntime"} <= set(acc)
    assert acc["onnxruntime"] == pytest.approx(acc["pytorch"], abs=0.004)  # fp32 export loses nothing


def test_resume_continues_from_last_epoch(tmp_path):
    cfg = DistillConfig(vision_layers=2, samples=256, epochs=2, batch_size=32, threads=TRAIN_THREADS, eval_images=50)
    quiet = lambda m: None  # noqa: E731

    class Stop(Exception):
        pass

    def stop_after_first(epoch):
        if epoch == 1:
            raise Stop

    out = tmp_path / "student"
    with pytest.raises(Stop):
        distill("clip-shapes", out, cfg, log=quiet, on_epoch_end=stop_after_first)
    assert not out.exists()  # nothing half-written
    assert (tmp_path / "student.distill-state" / "state.pt").is_file()

    # without --resume the interrupted state is not silently thrown away
    r = cli("distill", "clip-shapes", "-o", out, "--vision-layers", 2, "--samples", 256, "--epochs", 2)
    assert r.exit_code == 2 and "--resume" in r.output

    resumed = distill("clip-shapes", out, cfg, resume=True, log=quiet)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    straight = distill("clip-shapes", tmp_path / "straight", cfg, log=quiet)
    from safetensors.numpy import load_file

    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
    assert resumed["history"] == straight["history"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vision-layers", 9], "--vision-layers 9: the teacher's vision tower has 4 layers"),
        (["--text-layers", 0], "--text-layers 0"),
        ([], "the student would equal the teacher"),
        (["--vision-layers", 2, "--mlp-ratio", 1.5], "--mlp-ratio 1.5"),
        (["--vision-layers", 2, "--data", "/nonexistent/imgs"], "not found"),
        (["--vision-layers", 2, "--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, args, message):
    out = tmp_path / "s"
    r = cli("distill", "clip-shapes", "-o", out, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not out.exists()


def test_image_folder_with_captions_and_a_text_file(tmp_path):
    """A user's own data: images + captions.tsv (every 10th image held out) and extra texts."""
    from mmdeploy.common.datasets.shapes import generate

    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i, s in enumerate(generate("val", 40)):
        s.image.save(folder / f"{i:03d}.png")
        rows.append(f"{i:03d}.png\t{s.caption}")
    (folder / "captions.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "texts.txt").write_text("a photo of a red circle\na photo of a blue star\n")
    cfg = DistillConfig(
        vision_layers=2,
        text_layers=1,
        data=str(folder),
        texts=str(tmp_path / "texts.txt"),
        epochs=1,
        batch_size=16,
        threads=TRAIN_THREADS,
    )
    report = distill("clip-shapes", tmp_path / "s", cfg, log=lambda m: None)
    assert report["fidelity"]["eval_images"] == 4  # images 9, 19, 29, 39
    assert report["student"]["towers"]["text"]["trained"] is True
    assert (tmp_path / "s" / "model.safetensors").is_file()


def test_unsupported_teacher_is_named(tmp_path):
    r = cli("distill", "minilm", "-o", tmp_path / "s", "--text-layers", 3)
    assert r.exit_code == 2, r.output
    assert "distillation supports CLIPModel, VisionEncoderDecoderModel" in r.output


@pytest.mark.slow
def test_caption_student_imitates_teacher(tmp_path):
    """caption-shapes -> 2 encoder + 1 decoder layers, trained on the teacher's own captions; loads as HF."""
    from transformers import VisionEncoderDecoderModel

    from mmdeploy.exporter.registry import package_path

    out = tmp_path / "cap"
    cfg = DistillConfig(vision_layers=2, text_layers=1, samples=1024, epochs=2, threads=TRAIN_THREADS, eval_images=200)
    report = distill("caption-shapes", out, cfg, log=lambda m: None)
    m = VisionEncoderDecoderModel.from_pretrained(out)
    teacher = VisionEncoderDecoderModel.from_pretrained(package_path("fixtures/caption-shapes"))
    assert m.config.encoder.num_hidden_layers == 2 and m.config.decoder.n_layer == 1
    assert m.generation_config.max_length == teacher.generation_config.max_length  # same decoding defaults
    kl = [h["kl"] for h in report["history"]]
    assert kl[1] < 0.5 * kl[0]
    # two short epochs from a 3+2-layer teacher: it must already reproduce a good share of its captions
    assert report["fidelity"]["captions_equal_to_teacher"] >= 0.2
