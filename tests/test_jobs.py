"""Batch jobs (issue 16): 2,000 generated images (nested folders, six formats, broken files,
sidecars) embedded into Parquet shards locally and on a local Ray instance, a killed job resumed,
exact and FAISS search, text and caption jobs, and the errors a careless user meets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from mmdeploy.jobs import build_index, run_job, search  # noqa: E402
from mmdeploy.jobs.search import search_vectors  # noqa: E402
from mmdeploy.runtimes import load  # noqa: E402

N_FILES = 2000  # of which 1 in 97 broken (20) and 40 sidecar .json files beside them


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from mmdeploy.common.datasets.corpus import write_corpus

    root = tmp_path_factory.mktemp("corpus") / "photos"
    good = write_corpus(root, N_FILES)
    return root, good


@pytest.fixture(scope="session")
def local_job(clip_bundle, corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("jobs") / "local"
    summary = run_job(
        clip_bundle,
        out,
        images=[f"{root}/**/*"],
        backend="onnxruntime",
        precision="fp32",
        shard_size=256,
        progress=False,
    )
    return out, summary


def _table(folder: Path):
    return pq.read_table(folder).sort_by("item")  # the job files start with "_": readers skip them


def _embeddings(t) -> np.ndarray:
    return t["embedding"].combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)


def _one_line_exit_2(r, *needles: str) -> None:
    rc, err = r.returncode, r.stderr
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_local_job_embeds_every_good_image_once_and_counts_the_broken(local_job, corpus, clip_bundle):
    out, summary = local_job
    _, good = corpus
    t = _table(out)
    assert sorted(t["path"].to_pylist()) == sorted(good)
    assert summary["rows"] == len(good) and summary["broken"] == N_FILES - len(good) == 20
    assert summary["skipped_not_images"] == 40 and summary["shards"] == {"done": 8, "total": 8}
    meta = json.loads((out / "_job.json").read_text())
    broken = [b for s in meta["shards"].values() for b in s["broken"]]
    assert len(broken) == 20 and all(p not in good and p in reason for p, reason in broken)
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    assert set(t.column_names) == {"item", "path", "embedding", "model", "variant", "bundle_sha256"}
    assert set(t["variant"].to_pylist()) == {"onnxruntime/fp32"}
    # the same vectors as the one-call API, on a sample of the rows
    pipe = load(clip_bundle, backend="onnxruntime", precision="fp32")
    rows = np.linspace(0, t.num_rows - 1, 50).astype(int)
    ref = pipe.embed_images([t["path"][int(i)].as_py() for i in rows])
    assert (np.sum(_embeddings(t)[rows] * ref, axis=1) >= 0.9999).all()


@pytest.mark.slow  # starts a local Ray instance: 16 s alone, 30 s beside another worker
def test_ray_job_on_a_local_instance_matches_the_local_job(local_job, corpus, clip_bundle, tmp_path):
    pytest.importorskip("ray")
    root, _ = corpus
    local, _ = local_job
    summary = run_job(
        clip_bundle,
        tmp_path / "ray",
        images=[f"{root}/**/*"],
        backend="onnxruntime",
        precision="fp32",
        shard_size=256,
        ray="local",
        progress=False,
    )
    a, b = _table(local), _table(tmp_path / "ray")
    assert a["path"].to_pylist() == b["path"].to_pylist()
    assert (np.sum(_embeddings(a) * _embeddings(b), axis=1) >= 0.9999).all()
    assert summary["broken"] == 20 and summary["ray"]["actors"] >= 1
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in local.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_job_resumes_and_gives_each_image_exactly_once(
    sig, clip_bundle, corpus, local_job, tmp_path, cli_inprocess
):
    root, good = corpus
    out = tmp_path / "emb"
    args = [
        "embed",
        str(clip_bundle),
        "--images",
        f"{root}/**/*",
        "--out",
        str(out),
        "--shard-size",
        "128",
        "--batch",
        "16",
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
    ]
    # a shell's background job (CI under nohup ... &) starts with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the child the default, as a terminal would
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmdeploy.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    meta = json.loads((out / "_job.json").read_text())
    assert 0 < len(meta["shards"]) < 16, "the job must be stopped mid-way for this test to mean anything"
    if sig == signal.SIGINT:  # Ctrl-C: finished shards kept, the current one discarded, one line, exit 130
        assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err, err
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    _one_line_exit_2(cli_inprocess(*args), "--resume")  # without --resume: refused, nothing touched
    r = cli_inprocess(*args, "--resume")
    assert r.returncode == 0, r.stderr
    t = _table(out)
    paths = t["path"].to_pylist()
    assert len(paths) == len(set(paths)) and sorted(paths) == sorted(good)
    assert t["item"].to_pylist() == sorted(set(t["item"].to_pylist()))
    ref = _table(local_job[0])
    assert paths == ref["path"].to_pylist()
    assert (np.sum(_embeddings(t) * _embeddings(ref), axis=1) >= 0.9999).all()
    assert json.loads((out / "_summary.json").read_text())["rows"] == len(good)


def test_search_finds_an_image_by_itself_and_a_captions_image(local_job, corpus, clip_bundle):
    out, _ = local_job
    _, good = corpus
    t = _table(out)
    rng = np.random.default_rng(0)
    pipe = load(clip_bundle, backend="onnxruntime", precision="fp32")
    picks = [t["path"][int(i)].as_py() for i in rng.choice(t.num_rows, 20, replace=False)]
    queries = pipe.embed_images(picks)
    for path, hits in zip(picks, search_vectors(out, queries, k=5)):
        assert hits[0]["path"] == path and hits[0]["score"] > 0.9999
    # a caption's text -> an image with that caption among the top 10 (the corpus repeats captions)
    found = 0
    for path in picks:
        hits = search(out, text=good[path], k=10)
        found += any(good.get(h["path"]) == good[path] for h in hits)
    assert found >= 16, f"only {found} of 20 captions found an image of theirs in the top 10"


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_index_agrees_with_exact_search(kind, local_job, tmp_path):
    pytest.importorskip("faiss")
    import shutil

    out = tmp_path / "emb"
    shutil.copytree(local_job[0], out)
    t = _table(out)
    queries = _embeddings(t)[::97][:20]
    exact = search_vectors(out, queries, k=10, exact=True)
    info = build_index(out, kind=kind)
    assert info["rows"] == t.num_rows
    indexed = search_vectors(out, queries, k=10)
    recall = np.mean([len({h["item"] for h in a} & {h["item"] for h in b}) / 10 for a, b in zip(exact, indexed)])
    assert recall >= (0.999 if kind == "flat" else 0.9), recall
    # a shard added after the build makes the index stale: search falls back to exact
    meta = json.loads((out / "_job.json").read_text())
    del meta["shards"]["part-00007.parquet"]
    (out / "_job.json").write_text(json.dumps(meta))
    said = []
    assert all(h["shard"] != "part-00007.parquet" for h in search_vectors(out, queries[:2], k=10, log=said.append)[0])
    assert said and "older than the shards" in said[0]


def test_text_job_counts_blank_lines_as_broken_and_is_searchable(clip_bundle, tmp_path):
    from mmdeploy.common.datasets.photos import CAPTIONS

    texts = tmp_path / "captions.txt"
    lines = list(CAPTIONS) + ["", "a red car"]
    texts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "text-emb"
    s = run_job(clip_bundle, out, texts=[str(texts)], backend="onnxruntime", precision="fp32", progress=False)
    assert s["rows"] == len(lines) - 1 and s["broken"] == 1
    t = _table(out)
    assert t["text"].to_pylist() == [x for x in lines if x]
    hits = search(out, text="a red car", k=1)
    assert hits[0]["text"] == "a red car" and hits[0]["score"] > 0.9999


def test_caption_job_gives_the_pipelines_captions(shapes_bundle, corpus, tmp_path):
    root, good = corpus
    some = sorted(good)[:40]
    folder = tmp_path / "few"
    for p in some:
        dst = folder / Path(p).relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(p).read_bytes())
    out = tmp_path / "captions"
    s = run_job(
        shapes_bundle,
        out,
        images=[str(folder)],
        caption=True,
        backend="onnxruntime",
        precision="fp32",
        progress=False,
        shard_size=16,
    )
    assert s["rows"] == 40 and s["shards"]["done"] == 3
    t = _table(out)
    pipe = load(shapes_bundle, backend="onnxruntime", precision="fp32")
    assert t["caption"].to_pylist() == pipe.caption(t["path"].to_pylist())


def test_job_errors_are_one_line_and_write_nothing(
    clip_bundle, shapes_bundle, corpus, local_job, tmp_path, cli_inprocess
):
    root, _ = corpus
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    img = f"{root}/**/*.png"
    cases = [
        (["embed", str(clip_bundle), "--images", img, "--out", str(theirs)], "not empty"),
        (
            ["embed", str(clip_bundle), "--images", str(tmp_path / "none/*.jpg"), "--out", str(tmp_path / "o1")],
            "matched no image",
        ),
        (
            ["embed", str(clip_bundle), "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")],
            "no such file",
        ),
        (["embed", str(clip_bundle), "--images", img], "--out"),
        (["embed", str(clip_bundle), "--images", img, "--image", "x.png", "--out", str(tmp_path / "o3")], "one form"),
        (["embed", str(clip_bundle), "--images", img, "--out", str(theirs / "notes.txt")], "is a file"),
        (["embed", str(clip_bundle), "--images", img, "--out", str(tmp_path / "o4"), "--batch", "0"], "--batch"),
        (["embed", str(clip_bundle), "--images", img, "--out", str(tmp_path / "o5"), "--resume"], "no job to resume"),
        (["embed", str(shapes_bundle), "--images", img, "--out", str(tmp_path / "o6")], "image encoder"),
        (["caption", str(clip_bundle), "--images", img, "--out", str(tmp_path / "o7")], "captioning bundle"),
        (
            ["caption", str(shapes_bundle), "--images", img, "--out", str(tmp_path / "o8"), "--max-new-tokens", "999"],
            "positions",
        ),
        (
            ["embed", str(clip_bundle), "--texts", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o9")],
            "no such file",
        ),
        (
            [
                "embed",
                str(clip_bundle),
                "--images",
                img,
                "--out",
                str(local_job[0]),
                "--resume",
                "--shard-size",
                "100",
                "--backend",
                "onnxruntime",
                "--precision",
                "fp32",
            ],
            "shard_size",
        ),
        (["search", str(theirs), "--text", "a cat"], "not an mmdeploy job"),
        (["search", str(local_job[0])], "one query"),
        (["search", str(local_job[0]), "--text", "a cat", "-k", "0"], "-k"),
        (["search", str(local_job[0]), "--text", "a cat", "--bundle", str(shapes_bundle)], "weights"),
        (["index", str(local_job[0]), "--kind", "lsh"], "--kind"),
    ]
    before = sorted(p.name for p in local_job[0].iterdir())
    for args, needle in cases:
        _one_line_exit_2(cli_inprocess(*args), needle)
    assert (theirs / "notes.txt").read_text() == "keep me" and len(list(theirs.iterdir())) == 1
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 10))
    assert sorted(p.name for p in local_job[0].iterdir()) == before
