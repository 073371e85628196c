"""Visual chat: SmolVLM (Idefics3 architecture) exported as vision + embed + decoder graphs, multi-turn
with the KV cache kept between turns.

A tiny SmolVLMForConditionalGeneration (random init, a word-level tokenizer with SmolVLM's special
tokens) checks the prompt (template + image expansion) and the pixels against transformers'
processor, and every turn's greedy tokens against ``generate`` on the whole history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmdeploy.common.datasets.photos import photo_batch  # noqa: E402
from mmdeploy.errors import InputError  # noqa: E402
from mmdeploy.runtimes import load  # noqa: E402

from .conftest import run_without_torch  # noqa: E402

BACKENDS = ["onnxruntime", "openvino"]
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
]
TILE_TAGS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
WORDS = (
    "user assistant system what is in the picture image color shape a red blue green circle square describe it "
    "the of and yes no how many are there"
).split()


def _tokenizer(tile_tags: bool = True):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = SPECIALS + (TILE_TAGS if tile_tags else [])
    vocab = {t: i for i, t in enumerate(specials)}
    for w in WORDS + [w.capitalize() for w in WORDS] + list(":?.,!'\n"):
        vocab.setdefault(w, len(vocab))
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def tiny_smolvlm(out: Path, split: bool = False, tile_tags: bool = True):
    """A tiny SmolVLM checkpoint folder saved with its processor; returns (model, processor).
    ``split``: the processor splits images into 32 px tiles (longest edge 64: up to 2 x 2 + 1)."""
    from transformers import (
        Idefics3ImageProcessor,
        Idefics3Processor,
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
    )
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    out.mkdir(parents=True)
    tok = _tokenizer(tile_tags)
    cfg = SmolVLMConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=tok.get_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
            initializer_range=0.2,
        ),
        scale_factor=2,
        image_token_id=tok.token_to_id("<image>"),
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(cfg).eval()
    model.save_pretrained(out)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<end_of_utterance>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    # the SmolVLM processor needs num2words and a video processor; Idefics3's expands images the same way
    ip = Idefics3ImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=split
    )
    proc = Idefics3Processor(image_processor=ip, tokenizer=fast, image_seq_len=4, chat_template=DEFAULT_CHAT_TEMPLATE)
    proc.save_pretrained(out)
    return model, proc


@pytest.fixture(scope="session")
def vlm_tiny(tmp_path_factory):
    from .bundle_cache import export_cached

    root = tmp_path_factory.mktemp("vlm")
    model, proc = tiny_smolvlm(root / "ckpt")
    bundle = root / "bundle"
    export_cached(str(root / "ckpt"), bundle, backends=BACKENDS, precisions=["fp32"], threads=2)
    return model, proc, bundle


def _msgs(turns: list[tuple[str, int]], answers: list[str]) -> list[dict]:
    """[(text, images attached)] user turns with the answers between them, in transformers' format."""
    out = []
    for k, (text, n_img) in enumerate(turns):
        out.append({"role": "user", "content": [{"type": "image"}] * n_img + [{"type": "text", "text": text}]})
        if k < len(answers):
            out.append({"role": "assistant", "content": [{"type": "text", "text": answers[k]}]})
    return out


def _generate(model, proc, messages, images, n: int, **images_kwargs) -> list[int]:
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    inp = proc(text=text, images=[images] if images else None, return_tensors="pt", **images_kwargs)
    with torch.inference_mode():
        out = model.generate(**inp, max_new_tokens=n, do_sample=False, eos_token_id=[2])
    return out[0, inp["input_ids"].shape[1] :].tolist()


def test_prompt_and_pixels_are_the_processors(vlm_tiny):
    model, proc, bundle = vlm_tiny
    pipe = load(bundle, backend="onnxruntime", precision="fp32")
    imgs = photo_batch(2)
    msgs = _msgs([("describe the picture", 2)], [])
    ref = proc(text=proc.apply_chat_template(msgs, add_generation_prompt=True), images=[imgs], return_tensors="np")
    assert pipe.prompt_ids(msgs, 2) == ref["input_ids"][0].tolist()
    np.testing.assert_allclose(pipe.pixel_values(imgs), ref["pixel_values"][0], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_turns_match_generate_on_the_whole_history(vlm_tiny, backend):
    """Each turn's greedy tokens equal transformers' generate on the full conversation so far;
    turns 2 and 3 prefill only their new tokens (the cache holds the rest)."""
    model, proc, bundle = vlm_tiny
    pipe = load(bundle, backend=backend, precision="fp32", threads=2)
    imgs = photo_batch(2)
    turns = [("what is in the picture ?", 1), ("what color is it ?", 0), ("and this one ?", 1)]
    chat = pipe.chat()
    answers: list[str] = []
    prev_generated = 0
    for k, (text, n_img) in enumerate(turns):
        shown = imgs[: sum(n for _, n in turns[: k + 1])]
        before = len(chat.ids)
        answer = chat.send(text, images=imgs[len(chat.images) : len(chat.images) + n_img], max_new_tokens=6)
        ref = _generate(model, proc, _msgs(turns[: k + 1], answers), shown, 6)
        assert chat.generated == ref, (k, chat.generated, ref)
        full = len(pipe.prompt_ids(_msgs(turns[: k + 1], answers), len(shown)))
        if k:  # the cache serves the whole earlier prompt; only the new turn (and the last answer
            # where the template renders it differently from how it was generated) is prefilled
            reused = full - chat.last_prefill
            assert reused >= before - prev_generated, (reused, before, prev_generated)
            assert chat.last_prefill <= full - before + prev_generated + 2
        answers.append(answer)
        prev_generated = len(chat.generated)


@pytest.fixture(scope="session")
def vlm_split(tmp_path_factory):
    """A tiny checkpoint whose processor splits images (SmolVLM's default), exported for ORT."""
    from .bundle_cache import export_cached

    root = tmp_path_factory.mktemp("vlm-split")
    model, proc = tiny_smolvlm(root / "ckpt", split=True)
    export_cached(str(root / "ckpt"), root / "bundle", backends=["onnxruntime"], precisions=["fp32"], threads=2)
    return model, proc, root / "bundle"


def _odd_images():
    """Photos of several aspects, a tall one, and one smaller than a tile (scaled up, then split)."""
    from PIL import Image

    imgs = photo_batch(4)[1:]
    return imgs + [imgs[0].transpose(Image.Transpose.ROTATE_90).resize((90, 200)), imgs[1].resize((20, 14))]


def test_split_images_prompt_and_pixels_are_the_processors(vlm_split):
    """rows x cols tiles + the global image, each image's <row_r_col_c> blocks: as the processor."""
    _, proc, bundle = vlm_split
    pipe = load(bundle, backend="onnxruntime", precision="fp32")
    assert pipe.image_splitting is True
    imgs = _odd_images()
    msgs = _msgs([("describe the picture", len(imgs))], [])
    ref = proc(text=proc.apply_chat_template(msgs, add_generation_prompt=True), images=[imgs], return_tensors="np")
    grids = pipe.grids(imgs)
    assert (2, 1) in grids and (2, 2) in grids and all(r > 0 for r, _ in grids), grids
    assert pipe.prompt_ids(msgs, grids) == ref["input_ids"][0].tolist()
    px = pipe.pixel_values(imgs)
    assert len(px) == sum(r * c + 1 for r, c in grids)
    np.testing.assert_allclose(px, ref["pixel_values"][0], atol=1e-5)
    pipe.image_splitting = False  # one tile per image, as the processor with do_image_splitting=False
    off = proc(
        text=proc.apply_chat_template(msgs, add_generation_prompt=True),
        images=[imgs],
        return_tensors="np",
        do_image_splitting=False,
    )
    assert pipe.prompt_ids(msgs, pipe.grids(imgs)) == off["input_ids"][0].tolist()
    np.testing.assert_allclose(pipe.pixel_values(imgs), off["pixel_values"][0], atol=1e-5)


def test_vision_gate_reads_a_spread_of_the_split_tiles(vlm_split):
    """quantize's vision gate: VISION_GATE_TILES of the held-out photos' tiles, first and last
    included, each exactly the tile the chat would run (the 51 tiles of 3 split photos at once held
    ~10 GB of activations on the 256M twin)."""
    from mmdeploy.exporter.quantization.feeds import VISION_GATE_TILES, vlm_fidelity_feeds
    from mmdeploy.runtimes import Bundle
    from mmdeploy.runtimes.pipelines.vlm import VISION_BATCH

    _, _, bundle = vlm_split
    feeds = vlm_fidelity_feeds(Bundle.open(bundle), ["vision"], threads=2)
    calls, what = feeds["vision"]
    assert all(len(c["pixel_values"]) <= VISION_BATCH for c in calls)  # as the chat runs its tiles
    got = np.concatenate([c["pixel_values"] for c in calls])
    every = load(bundle, backend="onnxruntime", precision="fp32").pixel_values(photo_batch(3))
    assert len(every) > VISION_GATE_TILES and len(got) == VISION_GATE_TILES
    assert f"{VISION_GATE_TILES} of their {len(every)} tiles" in what
    np.testing.assert_array_equal(got[0], every[0])
    np.testing.assert_array_equal(got[-1], every[-1])
    assert all(any(np.array_equal(t, e) for e in every) for t in got)


def test_split_images_two_turns_match_generate(vlm_split):
    model, proc, bundle = vlm_split
    pipe = load(bundle, backend="onnxruntime", precision="fp32", threads=2)
    imgs = _odd_images()[:2]
    turns = [("what is in the picture ?", 1), ("and this one ?", 1)]
    chat, answers = pipe.chat(), []
    for k, (text, _) in enumerate(turns):
        answer = chat.send(text, images=[imgs[k]], max_new_tokens=6)
        assert chat.generated == _generate(model, proc, _msgs(turns[: k + 1], answers), imgs[: k + 1], 6), k
        answers.append(answer)
    assert chat.last_prefill < len(chat.ids) / 2  # turn 2 ran its own image's tiles, not turn 1's


def test_split_checkpoint_without_tile_tags_is_refused(tmp_path):
    from mmdeploy.errors import CheckpointError
    from mmdeploy.exporter.export import export

    tiny_smolvlm(tmp_path / "ckpt", split=True, tile_tags=False)
    with pytest.raises(CheckpointError, match=r"no <row_1_col_1> token.*do_image_splitting"):
        export(str(tmp_path / "ckpt"), tmp_path / "bundle", backends=["onnxruntime"], precisions=["fp32"])
    assert not (tmp_path / "bundle").exists()


def test_answers_depend_on_the_image(vlm_tiny):
    _, _, bundle = vlm_tiny
    pipe = load(bundle, backend="onnxruntime", precision="fp32", threads=2)
    got = {pipe.generate("describe the picture", images=[im], max_new_tokens=6) for im in photo_batch(4)}
    assert len(got) > 1, got


def test_streaming_sampling_and_limits(vlm_tiny):
    _, _, bundle = vlm_tiny
    pipe = load(bundle, backend="onnxruntime", precision="fp32", threads=2)
    img = photo_batch(1)[0]
    plain = pipe.generate("describe the picture", images=[img], max_new_tokens=8)
    pieces = list(pipe.chat().send("describe the picture", images=[img], max_new_tokens=8, stream=True))
    assert "".join(pieces) == plain and len(pieces) >= 2
    a = pipe.generate("describe the picture", images=[img], max_new_tokens=8, temperature=1.0, seed=3)
    b = pipe.generate("describe the picture", images=[img], max_new_tokens=8, temperature=1.0, seed=3)
    assert a == b  # seeded sampling repeats
    samples = {
        pipe.generate("describe the picture", images=[img], max_new_tokens=8, temperature=2.0, seed=s) for s in range(6)
    }
    assert len(samples) > 1
    with pytest.raises(InputError, match="start a new conversation"):
        pipe.chat(max_tokens=16).send("describe the picture", images=[img], max_new_tokens=8)
    with pytest.raises(InputError, match="non-empty"):
        pipe.chat().send("  ")
    with pytest.raises(InputError, match="temperature"):
        pipe.chat().send("hi", temperature=-1)


def test_cli_chat_one_shot(vlm_tiny, tmp_path):
    from typer.testing import CliRunner

    from mmdeploy.cli import app

    _, _, bundle = vlm_tiny
    path = tmp_path / "x.png"
    photo_batch(1)[0].save(path)
    want = load(bundle, threads=2).generate("describe the picture", images=[str(path)], max_new_tokens=6)
    r = CliRunner().invoke(
        app, ["chat", str(bundle), "--image", str(path), "--prompt", "describe the picture", "--max-new-tokens", "6"]
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == want
    r = CliRunner().invoke(app, ["chat", str(bundle), "--image", str(tmp_path / "missing.png"), "--prompt", "hi"])
    assert r.exit_code == 2 and "missing.png" in r.output and "Traceback" not in r.output


def test_vlm_runs_without_torch(vlm_tiny, tmp_path):
    _, _, bundle = vlm_tiny
    img = tmp_path / "x.png"
    photo_batch(1)[0].save(img)
    run_without_torch(
        f"""
from mmdeploy.runtimes import load
for backend in ('onnxruntime', 'openvino'):
    chat = load({str(bundle)!r}, backend=backend, precision='fp32').chat()
    a = chat.send('describe the picture', images=[{str(img)!r}], max_new_tokens=4)
    b = chat.send('what color is it ?', max_new_tokens=4)
    assert isinstance(a, str) and isinstance(b, str) and chat.last_prefill < len(chat.ids) / 2
""",
        timeout=300,
    )


def test_bundle_layout(vlm_tiny):
    from mmdeploy.runtimes.bundle import Bundle

    b = Bundle.open(vlm_tiny[2])
    assert b.family == "vlm" and set(b.components) == {"vision", "embed", "decoder"}
    assert "chat_template.jinja" in b.manifest["files"]
    assert b.manifest["preprocess"]["config"]["do_image_splitting"] is False


def test_export_records_each_stage(vlm_tiny):
    """The manifest keeps each export stage's wall time and peak RSS (exporter/stages.py)."""
    from mmdeploy.runtimes.bundle import Bundle

    stages = {s["name"]: s for s in Bundle.open(vlm_tiny[2]).manifest["exporter"]["stages"]}
    for comp in ("vision", "embed", "decoder"):
        names = {f"{comp}: ONNX export", f"{comp}: onnxruntime/fp32 parity", f"{comp}: openvino/fp32 build"}
        assert names <= set(stages)
    assert "load" in stages and all(s["seconds"] >= 0 for s in stages.values())
    # the peak RSS is a high-water mark: it never falls from one stage to the next
    peaks = [s["peak_rss_mb"] for s in Bundle.open(vlm_tiny[2]).manifest["exporter"]["stages"]]
    assert peaks[0] > 0 and peaks == sorted(peaks)


# -- POST /v1/chat/completions with a VLM: the whole conversation per request ----------------------


@pytest.fixture(scope="module")
def vlm_server(vlm_tiny):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    from mmdeploy.runtimes.serve import create_app

    from .test_serve import running

    app = create_app({"vlm": vlm_tiny[2]}, backend="onnxruntime", precision="fp32", threads=2)
    with running(app) as (url, _):
        yield url


def test_openai_client_multi_turn_chat(vlm_server, vlm_tiny):
    from openai import OpenAI

    from .test_serve import data_url, png

    client = OpenAI(base_url=vlm_server + "/v1", api_key="none")
    img = photo_batch(2)[1]
    pipe = load(vlm_tiny[2], backend="onnxruntime", precision="fp32", threads=2)
    chat = pipe.chat()
    first = chat.send("describe the picture", images=[img], max_new_tokens=6)
    n_first = len(chat.generated)
    second = chat.send("what color is it ?", max_new_tokens=6)
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png(img))}},
                {"type": "text", "text": "describe the picture"},
            ],
        }
    ]
    r1 = client.chat.completions.create(model="vlm", messages=msgs, max_tokens=6)
    assert r1.choices[0].message.content == first
    assert r1.usage.completion_tokens == n_first and r1.choices[0].finish_reason in ("stop", "length")
    msgs += [{"role": "assistant", "content": first}, {"role": "user", "content": "what color is it ?"}]
    r = client.chat.completions.create(model="vlm", messages=msgs, max_tokens=6)
    assert r.choices[0].message.content == second
    # the server kept turn 1's KV cache: turn 2 prefilled only what follows the shared prefix
    assert r.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 2, (r.usage, r1.usage)
    # the same words about another image: nothing from the first image's tokens on is reused
    other = photo_batch(2)[0]
    swapped = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png(other))}},
                {"type": "text", "text": "describe the picture"},
            ],
        }
    ]
    r3 = client.chat.completions.create(model="vlm", messages=swapped, max_tokens=6)
    assert r3.choices[0].message.content == pipe.generate("describe the picture", images=[other], max_new_tokens=6)
    image_at = pipe.prompt_ids(_msgs([("describe the picture", 1)], []), 1).index(pipe.image_token_id)
    assert r3.usage.prompt_tokens_details.cached_tokens <= image_at
    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="vlm", messages=msgs, max_tokens=6, stream=True)
        if c.choices
    ]
    assert "".join(pieces) == second
    a = client.chat.completions.create(model="vlm", messages=msgs, max_tokens=6, temperature=1.5, seed=7)
    b = client.chat.completions.create(model="vlm", messages=msgs, max_tokens=6, temperature=1.5, seed=7)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_bad_vlm_conversations_are_4xx(vlm_server):
    import httpx

    from .test_serve import assert_error

    url = vlm_server + "/v1/chat/completions"
    for body, needle in [
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "last message"),
        ({"messages": [{"role": "user", "content": "what " * 300}]}, "holds"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                            {"type": "text", "text": "hi"},
                        ],
                    }
                ]
            },
            "image_url",
        ),
    ]:
        r = httpx.post(url, json=body, timeout=30)
        assert_error(r, 400)
        assert needle in r.json()["error"]["message"], (needle, r.json())


def test_bench_chat_rows(vlm_tiny, tmp_path):
    """bench: per variant TTFT, decode tokens/s, turn 2 with the kept cache vs recomputed, the step's
    memory floor; tokens equal PyTorch generate's."""
    from mmdeploy.benchmarks.bench import BenchConfig, bench

    rep = bench(
        str(vlm_tiny[2]), BenchConfig(runs=2, warmup=1, threads=2, max_new_tokens=5, record=False), log=lambda s: None
    )
    rows = {(r["backend"], r["precision"]): r for r in rep["chat"]}
    assert {("pytorch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")} <= set(rows)
    for key in (("onnxruntime", "fp32"), ("openvino", "fp32")):
        r = rows[key]
        assert r["tokens_match_pytorch"] is True
        assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["step_floor_ms"] > 0
        assert r["turn2_prefill_tokens"] < r["turn2_recomputed_prefill_tokens"]
        # decode after prompts of the lengths the tiny model holds (256 positions: 100 only), beside the floor
        (ctx,) = r["decode_by_context"]
        assert ctx["context"] == 100 and ctx["decode_tokens_per_s"] > 0 and 0 < ctx["floor_ms"] and ctx["of_floor"] > 0
    assert rows[("openvino", "fp32")]["kv_cache"] == "stateful"
    assert rows[("onnxruntime", "fp32")]["kv_cache"] == "shared buffer"
    assert rep["memory_bandwidth_gbs"] > 0 and rep["env"]["cpu"]
    # the tower beside its ceiling: the image's MACs (one unsplit tile here) over each row's vision time
    tower = rep["vision"]
    assert tower["tiles"] == 1 and tower["gmacs"] > 0 and tower["fp32"] > 0 and tower["int8"] > 0
    for key in (("onnxruntime", "fp32"), ("openvino", "fp32")):
        r = rows[key]
        assert r["vision_gmacs_per_s"] == pytest.approx(tower["gmacs"] / r["vision_ms"] * 1000, rel=0.01)
        assert r["vision_of_ceiling"] == pytest.approx(r["vision_gmacs_per_s"] / tower["fp32"], rel=0.01)


def test_quantized_chat_variants_record_token_agreement(vlm_tiny, tmp_path):
    """int8 / int4 chat variants: gated on cosine per graph, and their greedy tokens' agreement with
    fp32 recorded in the manifest; the int8 variant chats."""
    import shutil

    from typer.testing import CliRunner

    from mmdeploy.cli import app
    from mmdeploy.common.fidelity import token_agreement
    from mmdeploy.exporter.quantization.gates import vlm_tokens
    from mmdeploy.runtimes.bundle import Bundle

    path = tmp_path / "q"
    shutil.copytree(vlm_tiny[2], path)
    for precision in ("int8", "int4"):
        r = CliRunner().invoke(app, ["quantize", str(path), "--precision", precision, "--threads", "2"])
        assert r.exit_code == 0, r.output
        assert "greedy tokens follow fp32" in r.output
    checks = Bundle.open(path).manifest["variant_checks"]["greedy_agreement_vs_fp32"]
    assert set(checks) == {"onnxruntime/int8", "onnxruntime/int4"}
    # the recorded share is the one these variants really give (recomputed here, not read back); its
    # size is not asserted: a random tiny model's first greedy token is a near-tie that the CPU's int8
    # rounding decides (>= 0.5 on the AVX-512 VNNI EPYC of earlier CI runs, 0.0 on an AVX2-only one)
    ref, got = (vlm_tokens(load(path, backend="onnxruntime", precision=p, threads=2)) for p in ("fp32", "int8"))
    assert checks["onnxruntime/int8"]["agreement"] == pytest.approx(token_agreement(ref, got), abs=1e-4)
    print(checks)
    b = Bundle.open(path)
    for key, rec in checks.items():  # the variant's gate holds its token agreement beside the cosines
        assert rec["passed"] == (rec["agreement"] >= 0.8), rec
        arts = b.find(backend=key.split("/")[0], precision=key.split("/")[1])
        assert arts and all(a.gate["agreement"] == rec["agreement"] for a in arts)
        assert all(a.passed == (rec["passed"] and a.parity[a.gate["metric"]] >= a.gate["min_cosine"]) for a in arts)
    assert load(path, backend="onnxruntime", precision="int8", threads=2).generate(
        "describe the picture", images=photo_batch(1), max_new_tokens=4
    )


def test_openvino_int8_vision_is_static_where_it_keeps_the_gate(vlm_tiny, tmp_path):
    """OpenVINO INT8 of a chat bundle: the vision tower (compute-bound) is static NNCF INT8 with its
    activations quantized, calibrated on the built-in calibration photos (never the gates' held-out
    ones) or on --calib's images, where the variant keeps its gates (cosine, then greedy tokens); else
    weight-only INT8, the static try's figures recorded. embed and decoder stay weight-only."""
    import shutil

    import openvino as ov
    from PIL import Image
    from typer.testing import CliRunner

    from mmdeploy.cli import app
    from mmdeploy.common.datasets.photos import photos
    from mmdeploy.runtimes.bundle import Bundle

    def quantized(*more: str) -> dict:
        r = CliRunner().invoke(app, [*args, *more])
        assert r.exit_code == 0, r.output
        return {a.component: a for a in Bundle.open(path).find(backend="openvino", precision="int8")}

    def fake_quantize(art) -> int:
        xml = Bundle.open(path).path(art.path)
        return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(xml)).get_ops())

    path = tmp_path / "q"
    shutil.copytree(vlm_tiny[2], path)
    args = ["quantize", str(path), "--precision", "int8", "--backend", "openvino", "--threads", "2"]
    arts = quantized()
    vision = arts["vision"].recipe
    assert vision["recipe"] == "int8-static-else-weight-only"
    assert vision["calibration"] == {"data": "photos/train (images)", "samples": 12}
    assert {arts[c].recipe["mode"] for c in ("embed", "decoder")} == {"weight-only"}
    assert fake_quantize(arts["decoder"]) == 0
    # the tiny random model sits near both gates: either outcome, each consistent with its figures
    agreement = arts["vision"].gate["agreement"]
    if vision["mode"] == "static":
        assert arts["vision"].parity["cosine"] >= 0.99 and agreement >= 0.8 and fake_quantize(arts["vision"]) > 0
    else:
        tried = vision["replaced"]
        assert (
            vision["mode"] == "weight-only"
            and tried["build"].startswith("static")
            and fake_quantize(arts["vision"]) == 0
        )
        assert tried["cosine"] < 0.99 or tried["agreement"] < 0.8, tried
    assert all(a.parity["cosine"] >= a.gate["min_cosine"] for a in arts.values())
    decoder = arts["decoder"]  # the prefill's float ops in bf16 where the CPU has it, kept while tokens hold
    hint = "bf16" if "float_ops" in decoder.recipe else "f32"
    assert decoder.runtime["INFERENCE_PRECISION_HINT"] == hint and decoder.recipe["recipe"] == "int8-weight-only-bf16"

    # a gate the static graph keeps, calibrated on a folder's images: static is what ships, and chats
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, im in enumerate(photos("train")[:3]):
        Image.fromarray(np.asarray(im)).save(folder / f"{i}.png")
    arts = quantized("--min-cosine", "0.95", "--min-agreement", "0", "--calib", str(folder), "--samples", "2")
    vision = arts["vision"]
    assert (vision.recipe["mode"], vision.gate["min_cosine"]) == ("static", 0.95) and fake_quantize(vision) > 0
    assert vision.recipe["calibration"] == {"data": str(folder), "samples": 2}
    assert vision.parity["cosine"] >= 0.95 and "replaced" not in vision.recipe
    assert load(path, backend="openvino", precision="int8", threads=2).generate(
        "describe the picture", images=photo_batch(1), max_new_tokens=4
    )


def test_export_reuse_of_fp32_references_gives_the_gate_figures_of_recomputing(vlm_tiny, tmp_path):
    """export computes the fp32 references (held-out feeds, fp32 outputs, fp32 greedy tokens) once
    and every variant's gates compare to them: the recorded figures are those of recomputing them
    per variant (quantize on its own), to the last digit."""
    import json
    import shutil

    from mmdeploy.exporter.quantize import Fp32References, QuantConfig, quantize
    from mmdeploy.exporter.stages import Stages

    def figures(path: Path) -> tuple[dict, dict]:
        m = json.loads((path / "manifest.json").read_text())
        arts = {(a["component"], a["backend"], a["precision"]): (a["parity"], a["gate"]) for a in m["artifacts"]}
        return arts, m["variant_checks"]

    reused, recomputed = tmp_path / "reused", tmp_path / "recomputed"
    shutil.copytree(vlm_tiny[2], reused)
    shutil.copytree(vlm_tiny[2], recomputed)
    stages, references = Stages(), Fp32References()
    for precision in ("int8", "int4"):
        cfg = dict(precision=precision, backend="onnxruntime", threads=2)
        quantize(reused, QuantConfig(**cfg), stages=stages, references=references)
        quantize(recomputed, QuantConfig(**cfg))
    assert figures(reused) == figures(recomputed)
    assert set(figures(reused)[1]["greedy_agreement_vs_fp32"]) == {"onnxruntime/int8", "onnxruntime/int4"}
    names = [s["name"] for s in stages.records]
    assert names.count("fp32 references: held-out feeds") == 1 and names.count("fp32 references: greedy tokens") == 1
    assert names.count("decoder: fp32 reference outputs") == 1 and "decoder: onnxruntime/int4 quantize + gate" in names


# -- the decoder's KV cache kept in place (ORT IOBinding, OpenVINO stateful) ---------------------------


def _old_bundle(bundle: Path, out: Path) -> Path:
    """A copy without the manifest's kv_cache record: a bundle exported before it existed."""
    import json
    import shutil

    shutil.copytree(bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    del m["chat"]["kv_cache"]
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def _conversation(pipe, imgs) -> list[tuple[list[int], int]]:
    """Greedy tokens and prefilled counts of a kept conversation: a turn with an image, a follow-up
    (the cache trimmed to the shared prefix), the history given again with the image swapped (cut at
    its first image token), a reset, then a long turn that outgrows the first turn's room."""
    chat, out = pipe.chat(), []
    chat.send("what is in the picture ?", images=[imgs[0]], max_new_tokens=6)
    out.append((chat.generated, chat.last_prefill))
    chat.send("what color is it ?", max_new_tokens=6)
    out.append((chat.generated, chat.last_prefill))
    chat.restore(chat.messages[:2], [imgs[1]])
    chat.send("and this one ?", max_new_tokens=6)
    out.append((chat.generated, chat.last_prefill))
    chat.reset()
    assert chat.decoder is None and chat.cache_bytes == 0
    chat.send("describe the picture", images=[imgs[2]], max_new_tokens=4)
    out.append((chat.generated, chat.last_prefill))
    long = " ".join(WORDS * 3)  # ~100 tokens: the decoder grows past the room the first turn asked for
    chat.send(long, max_new_tokens=40)
    out.append((chat.generated, chat.last_prefill))
    assert len(chat.ids) > 120 and chat.decoder.length == len(chat.ids)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_kv_gives_the_run_paths_tokens(vlm_tiny, tmp_path, backend):
    """The backend's decoder (ORT: IOBinding into buffers sized per turn; OpenVINO: a stateful model)
    gives the greedy tokens of the graph run as exported (the cache in and out of every step), across a
    kept conversation: prefix trimmed, image swapped, cache reset, a long turn. OpenVINO's reference is
    the same bundle without the manifest's kv_cache record (as exported before it), which runs as before."""
    from mmdeploy.runtimes.backends.onnxruntime import OrtDecoder
    from mmdeploy.runtimes.backends.openvino import OvDecoder, OvStatefulDecoder
    from mmdeploy.runtimes.session import RunDecoder

    imgs = photo_batch(3)
    fast = load(vlm_tiny[2], backend=backend, precision="fp32", threads=2)
    assert fast.kv_state == (backend == "openvino")
    assert isinstance(fast.open_decoder(), {"onnxruntime": OrtDecoder, "openvino": OvStatefulDecoder}[backend])
    if backend == "openvino":
        ref = load(_old_bundle(vlm_tiny[2], tmp_path / "old"), backend=backend, precision="fp32", threads=2)
        assert not ref.kv_state and isinstance(ref.open_decoder(), OvDecoder)
    else:
        ref = load(vlm_tiny[2], backend=backend, precision="fp32", threads=2)
        ref.kv_in_place = False
        assert type(ref.open_decoder()) is RunDecoder
    got = _conversation(fast, imgs)
    assert got == _conversation(ref, imgs)
    assert len({tuple(t) for t, _ in got}) > 2  # the turns differ: the comparison is not of one answer


def test_stateful_decoder_keeps_the_cache_of_the_run_path(vlm_tiny):
    """OpenVINO stateful: a prefill and steps give the logits and cache that run() gives with the cache
    passed in; run() on the stateful session still takes past and returns present (the declared graph);
    trim keeps a prefix that continues as the run path does."""
    pipe = load(vlm_tiny[2], backend="openvino", precision="fp32", threads=2)
    sess = pipe.sessions["decoder"]
    assert sess.stateful and "past.0.key" in {s.name for s in sess.inputs}
    # the attention fused at load (chat.kv_cache.fused_attention): every layer's SDPA reads its cache
    # straight from the state (MemoryInput), with no Concat copying it between
    runtime = sess._compiled.get_runtime_model()
    kind = lambda op: op.get_rt_info()["layerType"].astype(str)  # noqa: E731
    sdpa = [op for op in runtime.get_ops() if kind(op) == "ScaledDotProductAttention"]
    assert len(sdpa) == pipe.n_layers
    assert all([kind(i.get_source_output().get_node()) for i in op.inputs()].count("MemoryInput") == 2 for op in sdpa)
    dec = pipe.open_decoder()
    dec.start(pipe.empty_cache(), {}, 16)
    ids = pipe.prompt_ids([{"role": "user", "content": [{"type": "text", "text": "describe the picture"}]}], 0)
    emb, past = pipe.embed(ids), pipe.empty_cache()
    pos = np.arange(len(ids), dtype=np.int64)[None]
    for _ in range(4):
        plain = sess.run({"inputs_embeds": emb, "position_ids": pos, **past})
        logits = dec.step({"inputs_embeds": emb, "position_ids": pos})
        np.testing.assert_allclose(logits, plain["logits"], rtol=1e-4, atol=1e-5)
        past = {p: plain[q] for p, q in pipe.cache_pairs}
        for p, q in pipe.cache_pairs:
            np.testing.assert_allclose(dec.present(q), past[p], rtol=1e-4, atol=1e-6)
        tok = int(np.argmax(logits[0]))
        emb, pos = pipe.embed([tok]), np.asarray([[pos[0, -1] + 1]], np.int64)
    assert (
        dec.length == len(ids) + 3 and dec.nbytes == dec.length * 2 * pipe.n_layers * pipe.kv_heads * pipe.head_dim * 4
    )
    keep = len(ids) - 2
    dec.trim(keep)
    short = {p: np.ascontiguousarray(v[:, :, :keep]) for p, v in past.items()}
    emb, pos = pipe.embed(ids[keep : keep + 1]), np.asarray([[keep]], np.int64)
    plain = sess.run({"inputs_embeds": emb, "position_ids": pos, **short})
    np.testing.assert_allclose(
        dec.step({"inputs_embeds": emb, "position_ids": pos}), plain["logits"], rtol=1e-4, atol=1e-5
    )
    assert dec.length == keep + 1


def test_ort_decoder_trims_and_grows_in_place(vlm_tiny):
    """ORT: the cache is kept in two buffers; trim copies the prefix once, reserve grows them (the cache
    moved along) only when a turn needs more room than they have."""
    pipe = load(vlm_tiny[2], backend="onnxruntime", precision="fp32", threads=2)
    ref = load(vlm_tiny[2], backend="onnxruntime", precision="fp32", threads=2)
    ref.kv_in_place = False
    chat, plain = pipe.chat(), ref.chat()
    for c in (chat, plain):
        c.send("what is in the picture ?", images=photo_batch(1), max_new_tokens=5)
    dec = chat.decoder
    before = dec.nbytes
    buffers = [b.ctypes.data for side in dec.buffers for b in side]
    dec.trim(dec.length - 3)
    assert [b.ctypes.data for side in dec.buffers for b in side] == buffers and dec.nbytes == before
    plain.decoder.trim(plain.decoder.length - 3)
    for _, q in pipe.cache_pairs:
        np.testing.assert_array_equal(dec.present(q), plain.decoder.present(q))
    dec.reserve(1)  # fits: nothing moves
    assert [b.ctypes.data for side in dec.buffers for b in side] == buffers
    dec.reserve(200)
    assert dec.nbytes > before
    for _, q in pipe.cache_pairs:
        np.testing.assert_array_equal(dec.present(q), plain.decoder.present(q))


def test_ort_decoder_is_group_query_attention_with_the_portable_graphs_tokens(vlm_tiny):
    """ONNX Runtime's fp32 decoder is written with one GroupQueryAttention per layer (no cache Concat left)
    beside the portable graph, and runs over one shared buffer per cache entry: across a kept conversation
    (prefix trimmed, image swapped, reset, a long turn) its greedy tokens and prefills are those of the
    portable graph run as exported, the whole cache in and out of every step."""
    import onnx

    from mmdeploy.runtimes.backends.onnxruntime import OrtSession, OrtSharedKvDecoder
    from mmdeploy.runtimes.bundle import Bundle
    from mmdeploy.runtimes.session import RunDecoder

    bundle = Bundle.open(vlm_tiny[2])
    art = bundle.find("decoder", "onnxruntime", "fp32")[0]
    assert art.path == "onnx/decoder.gqa.onnx" and art.runtime == {"kv_cache": "shared_buffer"}
    graph = onnx.load(str(bundle.path(art.path)), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == bundle.manifest["chat"]["num_layers"]
    assert not [n for n in graph.node if n.op_type == "Concat" and n.input[0].startswith("past.")]
    assert [i.name for i in graph.input] == [i["name"] for i in bundle.components["decoder"]["inputs"]]

    imgs = photo_batch(3)
    fast = load(vlm_tiny[2], backend="onnxruntime", precision="fp32", threads=2)
    assert isinstance(fast.open_decoder(), OrtSharedKvDecoder)
    ref = load(vlm_tiny[2], backend="onnxruntime", precision="fp32", threads=2)
    ref.sessions["decoder"] = OrtSession(bundle.path(bundle.components["decoder"]["onnx"]), threads=2)
    ref.kv_in_place = False
    assert type(ref.open_decoder()) is RunDecoder
    got = _conversation(fast, imgs)
    assert got == _conversation(ref, imgs)
    assert len({tuple(t) for t, _ in got}) > 2


def test_ort_vision_attention_is_one_multi_head_attention_with_the_portable_features(vlm_tiny):
    """ONNX Runtime's fp32 vision graph runs each layer's attention as one MultiHeadAttention (no Softmax
    left), beside the portable graph, and gives its image features on real photos."""
    import onnx

    from mmdeploy.runtimes.backends.onnxruntime import OrtSession
    from mmdeploy.runtimes.bundle import Bundle

    bundle = Bundle.open(vlm_tiny[2])
    art = bundle.find("vision", "onnxruntime", "fp32")[0]
    assert art.path == "onnx/vision.mha.onnx"
    ops = [n.op_type for n in onnx.load(str(bundle.path(art.path)), load_external_data=False).graph.node]
    assert ops.count("MultiHeadAttention") == vlm_tiny[0].config.vision_config.num_hidden_layers
    assert "Softmax" not in ops
    pipe = load(vlm_tiny[2], backend="onnxruntime", precision="fp32", threads=2)
    px = pipe.pixel_values(photo_batch(3))
    plain = OrtSession(bundle.path(bundle.components["vision"]["onnx"]), threads=2).run({"pixel_values": px})
    fused = pipe.sessions["vision"].run({"pixel_values": px})
    np.testing.assert_allclose(fused["image_features"], plain["image_features"], rtol=1e-4, atol=1e-5)


def test_fusing_attention_refuses_graphs_it_does_not_know(vlm_tiny, tmp_path):
    """A graph without the exported decoder's attention, or one already fused, is refused with the reason."""
    from mmdeploy.errors import ExportError
    from mmdeploy.exporter.ort_attention import fuse_chat_decoder, fuse_mha
    from mmdeploy.runtimes.bundle import Bundle

    bundle = Bundle.open(vlm_tiny[2])
    chat = bundle.manifest["chat"]
    with pytest.raises(ExportError, match=r"layer 0: present\.0\.key / present\.0\.value are not Concats"):
        fuse_chat_decoder(bundle.path("onnx/embed.onnx"), tmp_path / "x.onnx", chat)
    with pytest.raises(ExportError, match="already runs its attention as GroupQueryAttention"):
        fuse_chat_decoder(bundle.path("onnx/decoder.gqa.onnx"), tmp_path / "x.onnx", chat)
    with pytest.raises(ExportError, match="embed.onnx has no Softmax attention to fuse"):
        fuse_mha(bundle.path("onnx/embed.onnx"), tmp_path / "x.onnx", 2)
    with pytest.raises(ExportError, match="attention 0: the Softmax does not read a MatMul"):
        fuse_mha(bundle.path("onnx/decoder.onnx"), tmp_path / "x.onnx", 2)  # its scores are reshaped first
    assert not (tmp_path / "x.onnx").exists()


def test_bad_kv_cache_records_are_refused(vlm_tiny, tmp_path):
    import json
    import shutil

    from mmdeploy.errors import BundleError
    from mmdeploy.runtimes.bundle import Bundle

    path = tmp_path / "b"
    shutil.copytree(vlm_tiny[2], path)
    m = json.loads((path / "manifest.json").read_text())
    assert m["chat"]["kv_cache"] == {
        "stateful": ["openvino"],
        "fused_attention": ["openvino"],
        "shared_buffer": ["onnxruntime"],
        "precision": "fp32",
    }
    m["chat"]["kv_cache"]["precision"] = "int3"
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"chat\.kv_cache\.precision"):
        Bundle.open(path)


@pytest.mark.slow
def test_vision_tower_mlp_pruned_recovers_its_features_and_chats_after_export(tmp_path):
    """prune on a chat model: half of the vision tower's MLP channels, recovered by matching the image
    features the language model reads; the language model is the teacher's, bit for bit; the pruned
    folder exports (its chat template and processor with it) and answers as its PyTorch generate."""
    import json

    from typer.testing import CliRunner

    from mmdeploy.cli import app

    teacher, proc = tiny_smolvlm(tmp_path / "ckpt")
    out, bundle = tmp_path / "pruned", tmp_path / "bundle"
    args = ["prune", str(tmp_path / "ckpt"), "-o", str(out), "--mlp", "0.5", "--samples", "512", "--epochs", "2"]
    r = CliRunner().invoke(app, [*args, "--calib-samples", "32", "--threads", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "prune.json").read_text())
    before = report["fidelity_before_recovery"]["image_feature_cosine_to_teacher"]
    after = report["fidelity"]["image_feature_cosine_to_teacher"]
    assert after > before and after >= 0.99, (before, after)
    student = type(teacher).from_pretrained(out).eval()
    assert student.config.vision_config.intermediate_size == 32  # of 64
    t_lm, s_lm = teacher.model.text_model.state_dict(), student.model.text_model.state_dict()
    assert t_lm.keys() == s_lm.keys() and all(torch.equal(t_lm[k], s_lm[k]) for k in t_lm)
    r = CliRunner().invoke(app, ["export", str(out), "-o", str(bundle), "--backend", "onnxruntime", "--threads", "2"])
    assert r.exit_code == 0, r.output
    arts = json.loads((bundle / "manifest.json").read_text())["artifacts"]
    assert all(a["parity"]["cosine"] >= 0.9999 for a in arts if a["component"] == "vision")
    chat = load(bundle, backend="onnxruntime", precision="fp32", threads=2).chat()
    imgs = photo_batch(1)
    chat.send("what is in the picture ?", images=imgs, max_new_tokens=6)
    assert chat.generated == _generate(student, proc, _msgs([("what is in the picture ?", 1)], []), imgs, 6)
