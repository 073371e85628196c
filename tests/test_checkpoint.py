"""Resolving SOURCE: registry names, folders, twins, and the errors for each way it goes wrong."""

from __future__ import annotations

import json

import pytest

from mmdeploy.errors import CheckpointError, UnsupportedModelError
from mmdeploy.exporter.checkpoint import family_of, resolve, state_sha256
from mmdeploy.exporter.registry import registry


def test_registry_entries_are_complete():
    from mmdeploy.exporter.families import families

    for name, ent in registry().items():
        assert ent["family"] in families(), name  # a registered family (was a hard-coded list of three)
        assert (
            ent.get("path") or ent.get("package") or (ent.get("hub") and ent.get("config") and ent.get("preprocessor"))
        ), name


def test_hub_model_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        CheckpointError,
        match="cannot download openai/clip-vit-base-patch32: pass a local checkpoint folder or --random-weights",
    ):
        resolve("clip-vit-b32")


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match="'GPT2LMHeadModel'.*CLIPModel"):
        family_of({"architectures": ["GPT2LMHeadModel"]}, "x")


def test_shipped_fixture_resolves_by_name_and_by_folder():
    by_name = resolve("clip-shapes")
    by_path = resolve(by_name.source["path"])
    assert by_path.name == "clip-shapes" and by_name.family == "clip"
    assert by_name.source["weights_sha256"] == by_path.source["weights_sha256"]


def test_random_weights_rejects_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="--random-weights takes a models.yaml name"):
        resolve(str(tmp_path), random_weights=True)


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        resolve(str(tmp_path))


def test_missing_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip"}))
    with pytest.raises(CheckpointError, match="has no weights"):
        resolve(str(tmp_path))


@pytest.mark.slow
def test_random_twin_is_deterministic_and_has_the_real_shape():
    a = resolve("clip-vit-b32", random_weights=True)
    n_params = sum(p.numel() for p in a.model.parameters())
    assert 151_000_000 < n_params < 152_000_000  # openai/clip-vit-base-patch32: 151.28M
    assert state_sha256(a.model) == a.source["weights_sha256"]
    b = resolve("clip-vit-b32", random_weights=True)
    assert b.source["weights_sha256"] == a.source["weights_sha256"]


# transformers documents each default config as one hub checkpoint's architecture (GitConfig():
# microsoft/git-base; ViTConfig(): google/vit-base-patch16-224; GPT2Config(): gpt2; Blip*Config():
# Salesforce/blip-*-base): an offline cross-check of the shape keys of the inline twin configs
SHAPE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "image_size",
    "patch_size",
    "num_channels",
    "encoder_hidden_size",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "hidden_act",
    "activation_function",
    "qkv_bias",
    "layer_norm_eps",
    "layer_norm_epsilon",
)
# BLIP's text decoder is BERT-base (12 heads of 64); BlipTextConfig's default of 8 heads is not the checkpoint's
KNOWN_DEVIATIONS = {("blip-base", "text_config", "num_attention_heads"): 12}


@pytest.mark.parametrize(
    "name,sub,cls",
    [
        ("vit-gpt2", "encoder", "ViTConfig"),
        ("vit-gpt2", "decoder", "GPT2Config"),
        ("blip-base", "text_config", "BlipTextConfig"),
        ("blip-base", "vision_config", "BlipVisionConfig"),
        ("git-base", None, "GitConfig"),
        ("git-base", "vision_config", "GitVisionConfig"),
    ],
)
def test_caption_twin_configs_have_the_hub_architectures(name, sub, cls):
    transformers = pytest.importorskip("transformers")
    cfg = registry()[name]["config"]
    cfg = cfg if sub is None else cfg[sub]
    ref = getattr(transformers, cls)()
    checked = [k for k in SHAPE_KEYS if k in cfg and hasattr(ref, k)]
    assert len(checked) >= 6, checked
    for k in checked:
        want = KNOWN_DEVIATIONS.get((name, sub, k), getattr(ref, k))
        assert cfg[k] == want, (name, sub, k, cfg[k], want)


def test_clip_saved_by_a_transformers5_processor_exports(tmp_path):
    """CLIPProcessor.save_pretrained (transformers 5) writes processor_config.json with the image
    processor nested, no preprocessor_config.json: it exports, and the bundle matches PyTorch."""
    import numpy as np
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    from mmdeploy.common.datasets.photos import photo_batch
    from mmdeploy.exporter.export import export
    from mmdeploy.exporter.registry import package_path
    from mmdeploy.runtimes import load

    src = str(package_path("fixtures/clip-shapes"))
    ckpt = tmp_path / "clip-t5"
    model = CLIPModel.from_pretrained(src).eval()
    model.save_pretrained(str(ckpt))
    CLIPProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(src), tokenizer=CLIPTokenizerFast.from_pretrained(src)
    ).save_pretrained(str(ckpt))
    assert (ckpt / "processor_config.json").is_file() and not (ckpt / "preprocessor_config.json").exists()
    export(str(ckpt), tmp_path / "b", threads=2)
    pipe = load(tmp_path / "b")
    imgs = photo_batch(3)
    proc = CLIPImageProcessor.from_pretrained(str(ckpt))  # transformers reads the nested layout itself
    px = proc(images=imgs, return_tensors="pt")["pixel_values"]
    assert np.allclose(pipe.preprocess(imgs), px.numpy(), atol=1e-5)
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=px).pooler_output.numpy()
    got = pipe.embed_images(imgs, normalize=False)
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() >= 0.9999
