"""Decoder pieces the generative pipelines share (caption, vqa): the streaming callback type and
the decoder feeds of a mid-generation step (bench and the fidelity checks time and compare them).

A helper module of this package, not a family: nothing here is registered."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

OnText = Callable[[int, str], bool | None]  # (image index, text so far) -> False to stop that image


def decoder_step_feeds(pipe, pixels: np.ndarray, steps: int = 8) -> dict[str, np.ndarray]:
    """Decoder inputs of a mid-caption step on real images: the prompt, then `steps` greedy
    tokens through the variant's own graphs (plain Session.run), returning the next step's feeds."""
    return decoder_feeds_after(pipe, pipe.encode(pixels), steps)


def decoder_feeds_after(pipe, kv: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """The decoder's feeds after ``steps`` greedy tokens from the start ids, given the per-row K/V
    the decoder starts from (cross K/V, or GIT's image-token past)."""
    info = pipe.info
    b = len(next(iter(kv.values())))
    names = [f"past.{i}.{x}" for i in range(int(info["num_layers"])) for x in ("key", "value")]
    if info["cross_attention"]:
        cross, past = kv, {n: np.zeros((b, info["num_heads"], 0, info["head_dim"]), np.float32) for n in names}
    else:
        cross, past = {}, dict(kv)
    start = list(pipe.generation.start_ids)
    ids = np.tile(np.asarray(start, np.int64), (b, 1))
    pos = np.tile(np.arange(len(start), dtype=np.int64), (b, 1))
    dec = pipe.sessions["decoder"]
    for _ in range(steps):
        out = dec.run({"input_ids": ids, "position_ids": pos, **past, **cross})
        past = {n: out[n.replace("past", "present")] for n in names}
        ids = out["logits"].argmax(-1)[:, None].astype(np.int64)
        pos = pos[:, -1:] + 1
    return {"input_ids": ids, "position_ids": pos, **past, **cross}
