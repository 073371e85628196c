"""Tiny checkpoints of the dual-encoder families, built in tests from configs (random init, seed 0)
and saved as ordinary HF folders: config.json, model.safetensors, tokenizer, image processor.

The offline tokenizers imitate each family's (no hub): SigLIP a SentencePiece-style Unigram
with `</s>` appended and used as pad. They are small so every id fits any tiny vocab.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CORPUS = [
    "a photo of a cat",
    "a photo of a dog",
    "an astronaut in a white suit",
    "a cup of coffee",
    "a tabby cat lying on a blanket",
    "a rocket on the launch pad",
    "the camera man on a field",
    "a horse running in a meadow",
    "a red car parked on the street",
    "two people talking",
    "A Photo Of An Astronaut!",
    "coffee, beans, and a mug.",
    "chelsea the cat",
]
_TOWER = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)

SIGLIP_TINY = {
    "architectures": ["SiglipModel"],
    "model_type": "siglip",
    "text_config": {
        "model_type": "siglip_text_model",
        "vocab_size": 512,
        "max_position_embeddings": 16,
        "pad_token_id": 1,
        "eos_token_id": 1,
        "projection_size": 32,
        **_TOWER,
    },
    "vision_config": {"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8, **_TOWER},
}
SIGLIP_PREPROCESSOR = {
    "image_processor_type": "SiglipImageProcessor",
    "do_resize": True,
    "size": {"height": 32, "width": 32},
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
}


def siglip_tokenizer(vocab_size: int = 512):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    punct = "[" + "".join("\\" + c for c in string.punctuation) + "]"
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Lowercase(),
            normalizers.Replace(Regex(punct), ""),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(
        CORPUS * 20,
        trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return tok


def save_siglip(
    folder: Path, config: dict | None = None, model_cls: str = "SiglipModel", config_cls: str = "SiglipConfig"
):
    """A tiny SigLIP checkpoint folder; returns the loaded torch model."""
    import torch
    import transformers

    cfg = dict(config or SIGLIP_TINY)
    cfg.pop("architectures")
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**cfg)).eval()
    with torch.no_grad():  # a non-trivial bias, so a scoring rule without it cannot pass
        model.logit_bias.fill_(-1.5)
        model.logit_scale.fill_(2.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    siglip_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"pad_token": "</s>", "eos_token": "</s>", "model_max_length": 16})
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(SIGLIP_PREPROCESSOR))
    return model


ALIGN_TINY = {
    "architectures": ["AlignModel"],
    "model_type": "align",
    "projection_dim": 32,
    "temperature_init_value": 0.7,
    "text_config": {
        "model_type": "align_text_model",
        "vocab_size": 512,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
    },
    # 3 EfficientNet stages; the last stage's width (32) is the image embedding, = projection_dim
    "vision_config": {
        "model_type": "align_vision_model",
        "image_size": 32,
        "width_coefficient": 1.0,
        "depth_coefficient": 1.0,
        "kernel_sizes": [3, 3, 5],
        "in_channels": [32, 16, 24],
        "out_channels": [16, 24, 32],
        "strides": [1, 2, 2],
        "num_block_repeats": [1, 1, 2],
        "expand_ratios": [1, 6, 6],
        "depthwise_padding": [],
        "hidden_dim": 64,
    },
}
# kakaobrain/align-base's processor, scaled down: resize, center crop, x / 127.5 - 1 (rescale offset)
ALIGN_IMAGE_PROCESSOR = {
    "image_processor_type": "EfficientNetImageProcessor",
    "do_resize": True,
    "size": {"height": 38, "width": 38},
    "resample": 2,
    "do_center_crop": True,
    "crop_size": {"height": 32, "width": 32},
    "do_rescale": True,
    "rescale_factor": 1 / 127.5,
    "rescale_offset": True,
    "do_normalize": False,
    "include_top": False,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def align_tokenizer():
    from tools.fixtures.dual_encoders import wordpiece_tokenizer

    return wordpiece_tokenizer(CORPUS)


def save_align(folder: Path):
    """A tiny ALIGN checkpoint saved the transformers 5 way: AlignProcessor.save_pretrained writes
    processor_config.json (image processor nested), no preprocessor_config.json."""
    import torch
    import transformers

    cfg = dict(ALIGN_TINY)
    cfg.pop("architectures")
    torch.manual_seed(0)
    model = transformers.AlignModel(transformers.AlignConfig(**cfg)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=align_tokenizer(), pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    proc = transformers.AlignProcessor(
        image_processor=transformers.EfficientNetImageProcessor(
            **{k: v for k, v in ALIGN_IMAGE_PROCESSOR.items() if k != "image_processor_type"}
        ),
        tokenizer=tok,
    )
    proc.save_pretrained(str(folder))
    return model
