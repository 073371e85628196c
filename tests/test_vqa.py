"""Visual question answering: BLIP VQA exported as vision + question + decoder-step graphs.

A tiny BlipForQuestionAnswering (built from a small config, trained a few steps on the shapes
questions so answers depend on the image) checks greedy and beam tokens against PyTorch
``generate`` on ONNX Runtime and OpenVINO; the trained ``vqa-shapes`` fixture checks answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmdeploy.common.datasets import shapes  # noqa: E402
from mmdeploy.errors import InputError  # noqa: E402
from mmdeploy.runtimes import load  # noqa: E402

from .conftest import run_without_torch  # noqa: E402

BACKENDS = ["onnxruntime", "openvino"]
TINY = dict(image_size=32, patch_size=8, hidden=32, vision_layers=2, text_layers=2, heads=2, max_positions=32)
QUESTIONS = [
    "what color is the shape?",
    "which shape is in the picture?",
    "is there a red circle?",
    "what color is the background?",
    "is the shape small or large?",
]


def tiny_vqa(out: Path, steps: int = 60) -> Path:
    """A tiny BLIP VQA checkpoint folder, trained ``steps`` steps on the shapes questions."""
    from tools.fixtures.vqa import build_model, build_tokenizer, image_processor_config, questions_of

    out.mkdir(parents=True)
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    pad, sep, dec = tok.token_to_id("[PAD]"), tok.token_to_id("[SEP]"), tok.token_to_id("[DEC]")
    torch.manual_seed(0)
    model = build_model(tok.get_vocab_size(), dec, sep, pad, TINY)
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor_config(32)))
    from mmdeploy.exporter.families.caption import image_preprocessor

    pre = image_preprocessor(image_processor_config(32), "BlipImageProcessor")
    rng = np.random.default_rng(0)
    samples = shapes.generate("train", 256, image_size=32)
    pairs = [(s, q, a) for s in samples for q, a in questions_of(s, rng)[:1]]  # the colour question
    px = torch.from_numpy(pre([s.image for s, _, _ in pairs]))
    q = torch.tensor([tok.encode(q).ids for _, q, _ in pairs])
    labels = torch.tensor([[dec, tok.token_to_id(a), sep] for _, _, a in pairs])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(pairs), 32))
        loss = model(input_ids=q[idx], pixel_values=px[idx], labels=labels[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vqa_tiny(tmp_path_factory):
    """(checkpoint folder, bundle) of the tiny VQA model, ORT + OpenVINO fp32."""
    from .bundle_cache import export_cached

    root = tmp_path_factory.mktemp("vqa")
    ckpt = tiny_vqa(root / "ckpt")
    bundle = root / "bundle"
    export_cached(str(ckpt), bundle, backends=BACKENDS, precisions=["fp32"], threads=2)
    return ckpt, bundle


@pytest.fixture(scope="module")
def vqa_model(vqa_tiny):
    from mmdeploy.exporter.checkpoint import load_folder

    return load_folder(vqa_tiny[0]).model


def _images(n: int):
    return [s.image for s in shapes.generate("test", n, image_size=32)]


def _torch_answers(model, pipe, images, questions, **kw) -> list[np.ndarray]:
    """PyTorch generate on each (image, question) alone."""
    px = pipe.pixel_values(images)
    out = []
    with torch.inference_mode():
        for p, qq in zip(px, questions):
            ids = torch.tensor([pipe.question_ids(qq)])
            out.append(
                model.generate(pixel_values=torch.from_numpy(p[None]), input_ids=ids, do_sample=False, **kw).numpy()[0]
            )
    return out


def _until_eos(ids, eos: int = 3) -> list[int]:
    """Tokens up to and including the first [SEP] (eos): batched rows carry padding after it."""
    ids = [int(t) for t in ids]
    return ids[: ids.index(eos, 1) + 1] if eos in ids[1:] else ids


def _same(ours, ref) -> bool:
    return len(ours) == len(ref) and all(_until_eos(a) == _until_eos(b) for a, b in zip(ours, ref))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_answer_tokens_match_pytorch(vqa_tiny, vqa_model, backend, num_beams):
    """Questions of different lengths in one call (grouped, never padded): each pair's tokens are
    generate's on that pair alone."""
    pipe = load(vqa_tiny[1], backend=backend, precision="fp32", threads=2)
    images = _images(5)
    ours = pipe.answer_ids(images, QUESTIONS, max_new_tokens=5, num_beams=num_beams)
    ref = _torch_answers(vqa_model, pipe, images, QUESTIONS, max_new_tokens=5, num_beams=num_beams)
    assert _same(ours, ref), (ours, ref)


def test_answers_depend_on_the_image_and_the_question(vqa_tiny):
    pipe = load(vqa_tiny[1], backend="onnxruntime", precision="fp32", threads=2)
    images = _images(12)
    colours = pipe.answer(images, "what color is the shape?", max_new_tokens=3)
    assert len(set(colours)) > 1, colours  # the trained steps made the image matter
    one = pipe.answer(images[0], QUESTIONS, max_new_tokens=3)
    assert len(one) == len(QUESTIONS) and one[0] == colours[0]


def test_one_image_many_questions_runs_the_vision_graph_once(vqa_tiny):
    pipe = load(vqa_tiny[1], backend="onnxruntime", precision="fp32", threads=2)
    calls = []
    vision = pipe.sessions["vision"]
    run = vision.run
    vision.run = lambda feeds: (calls.append(len(feeds["pixel_values"])), run(feeds))[1]
    try:
        pipe.answer(_images(1)[0], QUESTIONS, max_new_tokens=2)
    finally:
        vision.run = run
    assert calls == [1], calls


def test_streamed_answers_join_to_the_plain_ones(vqa_tiny):
    pipe = load(vqa_tiny[1], backend="onnxruntime", precision="fp32", threads=2)
    images = _images(3)
    plain = pipe.answer(images, QUESTIONS[:3], max_new_tokens=4)
    seen: dict[int, list[str]] = {}
    streamed = pipe.answer(
        images, QUESTIONS[:3], max_new_tokens=4, on_text=lambda i, t: seen.setdefault(i, []).append(t)
    )
    assert streamed == plain
    for i, texts in seen.items():
        assert texts[-1] == plain[i]
        assert all(texts[k + 1].startswith(texts[k]) for k in range(len(texts) - 1)), texts


def test_bad_questions_are_clear_errors(vqa_tiny):
    pipe = load(vqa_tiny[1], backend="onnxruntime", precision="fp32", threads=2)
    img = _images(1)[0]
    with pytest.raises(InputError, match="non-empty"):
        pipe.answer(img, "   ")
    with pytest.raises(InputError, match="tokens"):
        pipe.answer(img, "what " * 40)  # past the 32-position table
    with pytest.raises(InputError, match="2 images and 3 questions"):
        pipe.answer([img, img], QUESTIONS[:3])


def test_bundle_layout(vqa_tiny):
    from mmdeploy.runtimes.bundle import Bundle

    b = Bundle.open(vqa_tiny[1])
    assert b.family == "vqa"
    assert set(b.components) == {"vision", "question", "decoder"}
    checks = b.manifest["variant_checks"]["greedy_tokens_match_pytorch"]
    assert checks == {"onnxruntime/fp32": True, "openvino/fp32": True}


def test_cli_vqa(vqa_tiny, tmp_path):
    from typer.testing import CliRunner

    from mmdeploy.cli import app

    path = tmp_path / "x.png"
    _images(1)[0].save(path)
    r = CliRunner().invoke(
        app, ["vqa", str(vqa_tiny[1]), str(path), "-q", QUESTIONS[0], "-q", QUESTIONS[1], "--max-new-tokens", "3"]
    )
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    pipe = load(vqa_tiny[1], threads=2)
    want = pipe.answer(str(path), QUESTIONS[:2], max_new_tokens=3)
    assert lines == [f"{path}\t{q}\t{a}" for q, a in zip(QUESTIONS[:2], want)]
    r = CliRunner().invoke(app, ["vqa", str(vqa_tiny[1]), str(path)])
    assert r.exit_code == 2 and "--question" in r.output
    r = CliRunner().invoke(app, ["caption", str(vqa_tiny[1]), str(path)])
    assert r.exit_code == 2 and "vqa bundle" in r.stderr and "Traceback" not in r.output


def test_vqa_runs_without_torch(vqa_tiny, tmp_path):
    img = tmp_path / "x.png"
    _images(1)[0].save(img)
    run_without_torch(
        f"""
from mmdeploy.runtimes import load
for backend in ('onnxruntime', 'openvino'):
    pipe = load({str(vqa_tiny[1])!r}, backend=backend, precision='fp32')
    a = pipe.answer([{str(img)!r}, {str(img)!r}], 'what color is the shape?', max_new_tokens=3, num_beams=2)
    assert len(a) == 2 and a[0] == a[1] and isinstance(a[0], str)
""",
        timeout=300,
    )


def test_bench_vqa_rows_and_accuracy(vqa_tiny, tmp_path):
    """bench times vision, question, decoder step and whole answers per variant against PyTorch,
    with identical greedy tokens, and scores exact answers on the shapes questions."""
    import shutil

    from mmdeploy.benchmarks.bench import BenchConfig, bench

    path = tmp_path / "b"
    shutil.copytree(vqa_tiny[1], path)
    rep = bench(
        str(path),
        BenchConfig(batches=[1, 2], runs=2, warmup=1, threads=2, max_new_tokens=3, data="shapes", record=False),
        log=lambda s: None,
    )
    comps = {(r["component"], r["backend"], r["batch"]) for r in rep["results"]}
    for backend in ("pytorch", *BACKENDS):
        for c in ("vision", "question", "decoder", "generate"):
            assert (c, backend, 2) in comps, (c, backend)
    gen = [r for r in rep["results"] if r["component"] == "generate" and r["backend"] != "pytorch"]
    assert gen and all(r["tokens_match_pytorch"] for r in gen)
    acc = {(a["backend"], a["task"]): a for a in rep["accuracy"]}
    ref = acc[("pytorch", "vqa exact answer")]
    assert ref["n"] > 100
    for backend in BACKENDS:
        assert acc[(backend, "vqa exact answer")]["value"] == pytest.approx(ref["value"], abs=0.01)


# -- POST /v1/chat/completions (OpenAI), a VQA bundle answering the last user turn ------------------


@pytest.fixture(scope="module")
def chat_server(vqa_tiny):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    from mmdeploy.runtimes.serve import create_app

    from .test_serve import running

    app = create_app({"vqa": vqa_tiny[1]}, backend="onnxruntime", precision="fp32", threads=2, max_text_chars=2000)
    with running(app) as (url, _):
        yield url


def _image_message(img, question: str) -> dict:
    from .test_serve import data_url, png

    return {
        "role": "user",
        "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": data_url(png(img))}},
        ],
    }


def test_openai_client_chat_answers_like_the_pipeline(chat_server, vqa_tiny):
    from openai import OpenAI

    client = OpenAI(base_url=chat_server + "/v1", api_key="none")
    img = _images(1)[0]
    pipe = load(vqa_tiny[1], backend="onnxruntime", precision="fp32", threads=2)
    for q in QUESTIONS[:2]:
        want = pipe.answer(img, q, max_new_tokens=4)[0]
        r = client.chat.completions.create(model="vqa", messages=[_image_message(img, q)], max_tokens=4)
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        assert r.choices[0].message.content == want
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.prompt_tokens == len(pipe.question_ids(q))
        assert 1 <= r.usage.completion_tokens <= 4
    # a follow-up turn: the image comes from the first turn, the question from the last
    convo = [
        _image_message(img, QUESTIONS[0]),
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": QUESTIONS[3]},
    ]
    r = client.chat.completions.create(model="vqa", messages=convo, max_completion_tokens=4)
    assert r.choices[0].message.content == pipe.answer(img, QUESTIONS[3], max_new_tokens=4)[0]
    models = {m.id: m for m in client.models.list().data}
    assert "chat" in models["vqa"].capabilities


def test_openai_client_chat_stream_joins_to_the_plain_answer(chat_server):
    from openai import OpenAI

    client = OpenAI(base_url=chat_server + "/v1", api_key="none")
    img = _images(2)[1]
    msgs = [_image_message(img, QUESTIONS[1])]
    plain = client.chat.completions.create(model="vqa", messages=msgs, max_tokens=5).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="vqa", messages=msgs, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1


def test_bad_chat_messages_are_4xx(chat_server):
    import httpx

    from .test_serve import assert_error

    img = _images(1)[0]
    good = _image_message(img, "what color is the shape?")
    url = chat_server + "/v1/chat/completions"
    cases = [
        ({"messages": [{"role": "system", "content": "be brief"}]}, "no user turn"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "image_url.url"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input_audio"),
        ({"messages": [{"role": "user", "content": "what color is it?"}]}, "no image"),
        ({"messages": [good, {"role": "user", "content": "x" * 3000}]}, "characters"),
        ({"messages": [{"role": "user", "content": [good["content"][1]]}]}, "no text"),
        ({"messages": [good], "max_tokens": 0}, "max_tokens"),
        ({"messages": [good], "n": 2}, "n"),
        ({"messages": [good], "stream": True, "stream_options": {"include_usage": "yes"}}, "include_usage"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "q"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        ],
                    }
                ]
            },
            "image_url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "what " * 40}, good["content"][1]]}]},
            "tokens",
        ),
    ]
    for body, needle in cases:
        r = httpx.post(url, json=body, timeout=30)
        assert_error(r, 400)
        assert needle in r.json()["error"]["message"], (needle, r.json())
    r = httpx.post(chat_server + "/v1/caption", json={"image": good["content"][1]["image_url"]["url"]}, timeout=30)
    assert_error(r, 400)
    assert httpx.get(chat_server + "/health", timeout=10).status_code == 200


# -- vqa-shapes: the trained fixture ----------------------------------------------------------------

FIXTURE_IMAGES = 50  # x 6 questions each


@pytest.fixture(scope="module")
def fixture_questions():
    from mmdeploy.common.datasets import shapes_questions

    return shapes_questions(shapes.generate("test", FIXTURE_IMAGES))


_EXACT: dict = {}  # (bundle, variant) -> exact answers, computed once per session


def _exact(pipe, qa) -> float:
    key = (str(pipe.bundle.root), pipe.variant, len(qa))
    if key not in _EXACT:
        got = pipe.answer([im for im, _, _ in qa], [q for _, q, _ in qa], batch_size=64)
        _EXACT[key] = float(np.mean([g == a for g, (_, _, a) in zip(got, qa)]))
    return _EXACT[key]


@pytest.mark.slow  # 300 questions answered and a PyTorch reference: measured 17.6 s CPU (onnxruntime)
@pytest.mark.parametrize("backend", BACKENDS)
def test_vqa_shapes_answers_exactly(vqa_shapes_bundle, fixture_questions, backend):
    """>= 90% exact answers (fp32), the same answers on both backends as PyTorch's generate."""
    from mmdeploy.exporter.checkpoint import load_folder
    from mmdeploy.exporter.registry import package_path

    pipe = load(vqa_shapes_bundle, backend=backend, precision="fp32", threads=2)
    qa = fixture_questions
    assert _exact(pipe, qa) >= 0.9
    model = load_folder(package_path("fixtures/vqa-shapes")).model
    sub = qa[::10]
    ref = _torch_answers(model, pipe, [im for im, _, _ in sub], [q for _, q, _ in sub])
    assert [pipe.decode(r) for r in ref] == pipe.answer([im for im, _, _ in sub], [q for _, q, _ in sub])


@pytest.fixture(scope="module")
def vqa_quantized(vqa_shapes_bundle, tmp_path_factory):
    import shutil

    from typer.testing import CliRunner

    from mmdeploy.cli import app

    path = tmp_path_factory.mktemp("vqa-q") / "b"
    shutil.copytree(vqa_shapes_bundle, path)
    for backend, precision in (("onnxruntime", "int8"), ("onnxruntime", "int4"), ("openvino", "int8")):
        r = CliRunner().invoke(
            app, ["quantize", str(path), "--precision", precision, "--backend", backend, "--threads", "2"]
        )
        assert r.exit_code == 0, r.output
    return path


@pytest.mark.slow  # three quantizations, then 300 questions answered twice per case (~15 s CPU each time)
@pytest.mark.parametrize("backend,precision", [("onnxruntime", "int8"), ("onnxruntime", "int4"), ("openvino", "int8")])
def test_vqa_shapes_quantized_within_two_points(vqa_quantized, fixture_questions, backend, precision):
    base = _exact(load(vqa_quantized, backend=backend, precision="fp32", threads=2), fixture_questions)
    got = _exact(load(vqa_quantized, backend=backend, precision=precision, threads=2), fixture_questions)
    assert got >= base - 0.02, (backend, precision, got, base)
    # quantize recorded how far the variant's greedy answers follow fp32's
    from mmdeploy.runtimes.bundle import Bundle

    rec = Bundle.open(vqa_quantized).manifest["variant_checks"]["greedy_agreement_vs_fp32"][f"{backend}/{precision}"]
    assert 0.0 <= rec["agreement"] <= 1.0 and "photos" in rec["inputs"]
