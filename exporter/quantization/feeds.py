"""What quantize feeds a family's graphs: calibration inputs (the train splits) and the held-out
fidelity inputs each variant is compared to fp32 on (the test splits, never calibrated on).

Build-time only: the photos come from common.datasets.photos (scikit-image, the [export] extra)."""

from __future__ import annotations

import numpy as np

from ...common.datasets import DataSet, open_dataset
from ...errors import InputError, MMDeployError
from ...runtimes.bundle import Bundle
from ...runtimes.feeds import BundleFeeds
from ...runtimes.pipelines import pipeline_class
from ...runtimes.pipelines.decoders import decoder_feeds_after, decoder_step_feeds
from ...runtimes.pipelines.vlm import VISION_BATCH, vlm_pixels
from .recipe import Feeds

# component -> (feeds, what they are)
FidelityFeeds = dict[str, tuple[list[Feeds], str]]

HELD_OUT = {"images": 16, "texts": 32}  # held-out items per component kind


# -- encoders (dual encoders, text embeddings) ---------------------------------------------


def calibration_data(spec: str | None, component: str, kind: str, samples: int | None = None) -> DataSet:
    """The calibration set for one component (kind: images / texts); a folder without texts
    calibrates the text tower on the built-in real captions rather than failing. `samples`: how
    many the caller takes from the front (the generated shapes split renders only those, not its
    24,000 images, minutes of CPU)."""
    if spec is None:
        raise InputError("static INT8 needs calibration data: --calib DIR|FILE|shapes (or --mode dynamic)")
    limit = None
    if spec == "shapes" and samples is not None:
        from ...common.datasets.shapes import DEFAULT_N

        limit = min(samples, DEFAULT_N["train"])  # the front of the same split: the same samples
    data = open_dataset(spec, split="train", limit=limit)
    if kind == "images" and not data.images:
        raise InputError(f"--calib {spec}: the {component} component needs images, and {spec} has only text")
    if kind == "texts" and not data.texts:
        if not data.images:
            raise InputError(f"--calib {spec} has neither images nor texts")
        from ...common.datasets.photos import CAPTIONS

        data = DataSet(name="built-in captions", texts=list(CAPTIONS))
    return data


def held_out_data(kinds) -> DataSet:
    """Inputs for the fidelity check that the calibration never saw (kinds: the components' input kinds)."""
    if "images" not in kinds:
        return open_dataset("sentences", split="test")  # calibration uses the train half
    try:  # calibration reads the train splits (photos/train, shapes/train), never these
        return open_dataset("photos", split="test")
    except MMDeployError:
        return open_dataset("shapes", split="test")


def encoder_fidelity_feeds(bundle: Bundle, components: list[str], threads: int | None = None) -> FidelityFeeds:
    """component -> (held-out feeds, what they are), every component from one BundleFeeds."""
    feeds = BundleFeeds(bundle)
    held = held_out_data(set(feeds.kinds.values()))
    out = {}
    for comp in components:
        n = HELD_OUT[feeds.kinds[comp]]
        out[comp] = [feeds.feeds(comp, n, held)], f"fp32 ONNX on {n} held-out items of {held.name}"
    return out


def encoder_calibration_feeds(
    bundle: Bundle, component: str, spec: str | None, samples: int, same_shape: bool
) -> tuple[list[Feeds], str]:
    feeds = BundleFeeds(bundle)
    data = calibration_data(spec, component, feeds.kinds[component], samples)
    return feeds.samples(component, data, samples, same_shape=same_shape), data.name


# -- generative families: data-free, so only fidelity feeds ---------------------------------


def caption_fidelity_feeds(bundle: Bundle, components: list[str], threads: int | None = None) -> FidelityFeeds:
    """Real photos through the fp32 graphs (one pipeline for every component): encoder
    pixels; decoder first step and a mid-caption step."""
    from ...common.datasets.photos import photo_batch

    pipe = pipeline_class(bundle.family)(bundle, "onnxruntime", "fp32", threads=threads)
    px = pipe.pixel_values(photo_batch(4))
    out = {}
    for comp in components:
        if comp == "encoder":
            out[comp] = [{"pixel_values": px}], "fp32 ONNX on 4 held-out real photos"
        else:
            out[comp] = (
                [decoder_step_feeds(pipe, px, steps=0), decoder_step_feeds(pipe, px, steps=6)],
                "fp32 ONNX on 4 held-out real photos (decoder: first and 7th step)",
            )
    return out


def vqa_fidelity_feeds(bundle: Bundle, components: list[str], threads: int | None = None) -> FidelityFeeds:
    """Real photos and questions through the fp32 graphs: vision pixels, question inputs, the
    decoder's first and 7th step."""
    from ...common.datasets.photos import photo_batch

    pipe = pipeline_class(bundle.family)(bundle, "onnxruntime", "fp32", threads=threads)
    images = photo_batch(4)
    px = pipe.pixel_values(images)
    emb = pipe.sessions["vision"].run({"pixel_values": px})["image_embeds"]
    ids = np.tile(np.asarray(pipe.question_ids("what is in the picture?"), np.int64), (len(px), 1))
    what = "fp32 ONNX on 4 held-out real photos and a question"
    out = {}
    for comp in components:
        if comp == "vision":
            out[comp] = [{"pixel_values": px}], what
        elif comp == "question":
            out[comp] = [{"input_ids": ids, "image_embeds": emb}], what
        else:
            kv = pipe.cross_kv(emb, ids)
            out[comp] = (
                [decoder_feeds_after(pipe, kv, 0), decoder_feeds_after(pipe, kv, 6)],
                what + " (decoder: first and 7th step)",
            )
    return out


VISION_GATE_TILES = 6
# one interior tile from each of the 12 built-in calibration photos; 8 and 16 tiles measured the same
# held-out tile cosine on the SmolVLM-256M twin (0.9991 / 0.9987 min), NNCF's statistics ~1.3 s a tile
VISION_CALIBRATION_TILES = 12


def vlm_calibration_feeds(
    bundle: Bundle, component: str, spec: str | None, samples: int, same_shape: bool
) -> tuple[list[Feeds], str]:
    """The vision tower's calibration: `samples` tiles cut as the chat cuts them, spread over the
    images of --calib (default: the built-in calibration photos, which the gates never see)."""
    if component != "vision":
        raise InputError(f"{bundle.family} calibrates its vision tower only, not {component!r}")
    data = calibration_data(spec or "photos", component, "images", samples)
    pre = bundle.manifest["preprocess"]["config"]
    split = bool(pre.get("do_image_splitting", False))
    per_image = -(-samples // len(data.images))
    out: list[Feeds] = []
    for image in data.images:
        px = vlm_pixels([image], pre, split)  # one image at a time: 17 split tiles are 53 MB
        for i in np.unique(np.linspace(0, len(px) - 1, per_image + 2)[1:-1].round().astype(int)):
            out.append({"pixel_values": px[i : i + 1]})
        if len(out) >= samples:
            break
    return out[:samples], f"{data.name} ({'tiles' if split else 'images'})"


def vlm_fidelity_feeds(bundle: Bundle, components: list[str], threads: int | None = None) -> FidelityFeeds:
    """fp32 graphs on held-out photos: vision pixels, a prompt's ids, the decoder's prefill and a later step."""
    from ...common.datasets.photos import photo_batch

    pipe = pipeline_class(bundle.family)(bundle, "onnxruntime", "fp32", threads=threads)
    images = photo_batch(3)
    chat = pipe.chat()
    list(chat.send("Describe the image.", images=images[:1], max_new_tokens=6, stream=True))
    ids = pipe.prompt_ids(chat.messages[:1], chat.grids[:1])
    out = {}
    what = "fp32 ONNX on held-out real photos and a chat turn"
    for comp in components:
        if comp == "vision":
            # The tower sees each tile alone: 6 tiles evenly spread over the photos' 3 x 13-17 (split
            # tiles and global images alike) gate what all of them would, at a ninth of the cost; run
            # as the chat runs them, VISION_BATCH a call (a call's activations grow with its tiles)
            px = pipe.pixel_values(images)
            pick = np.unique(np.linspace(0, len(px) - 1, min(VISION_GATE_TILES, len(px))).round().astype(int))
            calls = [{"pixel_values": px[pick[i : i + VISION_BATCH]]} for i in range(0, len(pick), VISION_BATCH)]
            out[comp] = calls, what + f" (vision: {len(pick)} of their {len(px)} tiles)"
        elif comp == "embed":
            out[comp] = [{"input_ids": np.asarray([ids], np.int64)}], what
        else:
            out[comp] = [pipe.last_step_feeds(chat)], what + " (decoder: a step at the end of the first answer)"
    return out
