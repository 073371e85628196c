"""bench for chat (VLM) bundles: a two-turn conversation about a real photo per variant, against
PyTorch ``generate`` of the same model on the same prompts.

Rows per variant: ``vision`` (one image through the tower + connector), ``turn 1`` (time to first
token: image, embeddings and prefill; then decode tokens/s), ``turn 2`` (the follow-up with the
kept KV cache, and the same turn recomputed from the whole history, i.e. what a server that keeps
no cache pays), and the decode step's bytes against this machine's measured memory bandwidth:
the step's floor is (decoder weights + KV read) / bandwidth. PyTorch: TTFT = the first new
token's time in generate (a streamer records each token's); decode tokens/s from the later tokens'.

``decode_by_context``: decode tokens/s after a text prompt of each of ``CONTEXTS`` tokens
(a step: the token's embedding, the decoder with the conversation's cache, argmax), each beside
its floor at that context, so a cache that slows with length shows as the share of the floor falling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..common.env import environment
from ..errors import InputError
from ..runtimes.backends import get_backend
from ..runtimes.backends.onnxruntime import SHARED_BUFFER
from ..runtimes.bundle import Bundle
from ..runtimes.pipelines import pipeline_class

TURN1 = "Describe the image."
TURN2 = "What colors do you see?"
CONTEXTS = (100, 500, 1100, 2000)  # decode tokens/s after prompts of these lengths (those the model holds)


def memory_bandwidth_gbs(mb: int = 256, runs: int = 5) -> float:
    """This machine's copy bandwidth (read + write of ``mb`` MB, best of ``runs``), GB/s."""
    a = np.ones(mb * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def _ours(pipe, image, n_new: int, runs: int) -> dict[str, Any]:
    """Median timings over ``runs`` two-turn conversations (one untimed first)."""
    t1, d1, s1, t2, t2_full, p2, p2_full = [], [], [], [], [], [], []
    tokens = None
    for r in range(runs + 1):
        chat = pipe.chat()
        chat.send(TURN1, images=[image], max_new_tokens=n_new)
        first, gen1 = dict(chat.timing), list(chat.generated)
        chat.send(TURN2, max_new_tokens=n_new)
        second = dict(chat.timing)
        fresh = pipe.chat()  # the same turn 2 with nothing cached: the whole history is prefilled
        fresh.restore(chat.messages[:2], [image])
        fresh.send(TURN2, max_new_tokens=n_new)
        if r == 0:
            tokens = gen1
            continue
        t1.append(first["ttft_s"] * 1000)
        if first["decode_steps"]:
            d1.append(first["decode_s"] * 1000 / first["decode_steps"])
        s1.append(first["prefill_tokens"])
        t2.append(second["ttft_s"] * 1000)
        p2.append(second["prefill_tokens"])
        t2_full.append(fresh.timing["ttft_s"] * 1000)
        p2_full.append(fresh.timing["prefill_tokens"])
    step = _median(d1)
    return {
        "ttft_ms": round(_median(t1), 2),
        "prompt_tokens": int(_median(s1)),
        "step_ms": round(step, 3),
        "decode_tokens_per_s": round(1000 / step, 1) if step == step and step > 0 else None,
        "turn2_ttft_ms": round(_median(t2), 2),
        "turn2_prefill_tokens": int(_median(p2)),
        "turn2_ttft_recomputed_ms": round(_median(t2_full), 2),
        "turn2_recomputed_prefill_tokens": int(_median(p2_full)),
        "turn2_kept_vs_recomputed": round(_median(t2) / _median(t2_full), 3),
        "tokens": tokens,
    }


def kv_bytes_per_token(pipe) -> int:
    """Bytes of K and V one cached position adds (fp32), all layers."""
    return 2 * pipe.n_layers * pipe.kv_heads * pipe.head_dim * 4


def decode_by_context(pipe, contexts: list[int], steps: int, weights: int, bw: float) -> list[dict[str, Any]]:
    """Per context length that fits the model: median decode step after a prompt of that many tokens
    (the chat turn's text repeated), tokens/s, and the floor (weights + KV read) / bandwidth."""
    text = [{"role": "user", "content": [{"type": "text", "text": f"{TURN1} {TURN2}"}]}]
    filler = pipe.prompt_ids(text, 0)
    limit = int(pipe.generation["max_positions"])
    rows = []
    for n in contexts:
        if n + steps + 1 > limit:
            continue
        ids = (filler * (n // len(filler) + 1))[:n]
        with pipe.open_decoder() as dec:
            dec.start(pipe.empty_cache(), {}, n + steps + 1)
            logits = dec.step({"inputs_embeds": pipe.embed(ids), "position_ids": np.arange(n, dtype=np.int64)[None]})
            times = []
            for i in range(steps):
                t = time.perf_counter()
                tok = int(np.argmax(logits[0]))
                feeds = {"inputs_embeds": pipe.embed([tok]), "position_ids": np.asarray([[n + i]], np.int64)}
                logits = dec.step(feeds)
                times.append(time.perf_counter() - t)
        step = _median(times[1:] or times)  # the first step after a prefill warms the step's buffers
        floor = (weights + kv_bytes_per_token(pipe) * (n + steps // 2)) / (bw * 1e9)
        rows.append(
            {
                "context": n,
                "step_ms": round(step * 1000, 3),
                "decode_tokens_per_s": round(1 / step, 1),
                "floor_ms": float(f"{floor * 1000:.4g}"),  # significant digits: a tiny model's is microseconds
                "of_floor": float(f"{floor / step:.3g}"),
            }
        )
    return rows


def _pytorch(ref, pipe, image, n_new: int, runs: int) -> dict[str, Any]:
    import torch

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TURN1}]}]
    ids = torch.tensor([pipe.prompt_ids(msgs, pipe.grids([image]))])
    px = torch.from_numpy(pipe.pixel_values([image]))[None]
    kw = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=px,
        do_sample=False,
        eos_token_id=pipe.generation["eos_token_id"],
        pad_token_id=pipe.generation["pad_token_id"],
    )

    class Clock:  # generate's streamer protocol: put() gets the prompt, then each new token
        def __init__(self):
            self.at: list[float] = []

        def put(self, value):
            self.at.append(time.perf_counter())

        def end(self):
            pass

    def gen(n: int, streamer=None):
        with torch.inference_mode():
            return ref.model.generate(max_new_tokens=n, min_new_tokens=n, streamer=streamer, **kw)

    gen(1)
    tokens = ref.model.generate(max_new_tokens=n_new, **{**kw}).numpy()[0, ids.shape[1] :].tolist()
    # TTFT and steps from one timed generate's token times: two separate runs' difference drowns in
    # noise when the prefill is long (many image tiles) and the steps short
    one, steps = [], []
    for _ in range(runs):
        clock = Clock()
        t = time.perf_counter()
        gen(n_new, clock)
        one.append((clock.at[1] - t) * 1000)
        steps.append((clock.at[-1] - clock.at[1]) * 1000 / max(len(clock.at) - 2, 1))
    step = _median(steps)
    return {
        "ttft_ms": round(_median(one), 2),
        "prompt_tokens": int(ids.shape[1]),
        "step_ms": round(step, 3),
        "decode_tokens_per_s": round(1000 / step, 1) if step > 0 else None,
        "tokens": tokens,
    }


def chat_bench(bundle: Bundle, arts, cfg, default, log: Callable[[str], None], ref=None) -> dict[str, Any]:
    """``ref``: the family exporter holding the PyTorch model (None: no PyTorch rows)."""
    from ..common.datasets.photos import photo_batch

    cls = pipeline_class(bundle.family, str(bundle.root))
    variants = sorted(
        {
            (a.backend, a.precision)
            for a in arts
            if len(bundle.find(backend=a.backend, precision=a.precision)) >= len(bundle.components)
        }
    )
    variants = [v for v in variants if get_backend(v[0]).available() is None]
    if not variants:
        raise InputError(f"{bundle.root}: no complete chat variant runs here")
    image = photo_batch(1)[0]
    n_new, runs = cfg.max_new_tokens, max(1, min(cfg.runs, 5))
    bw = memory_bandwidth_gbs()
    log(f"memory bandwidth (copy): {bw:.1f} GB/s")
    rows = []
    pipes = {v: cls(bundle, v[0], v[1], threads=cfg.threads) for v in variants}
    base = pipes[variants[0]]
    tower = vision_cost(bundle, base, image, cfg.threads)
    ref_row = None
    if ref is not None:
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        log("pytorch: generate")
        ref_row = {"backend": "pytorch", "precision": "fp32", **_pytorch(ref, base, image, n_new, runs)}
        rows.append(ref_row)
    for (backend, precision), pipe in pipes.items():
        log(f"{backend}/{precision}: two-turn conversation x {runs}")
        vis = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            pipe.image_features([image])
            vis.append((time.perf_counter() - t) * 1000)
        row = {
            "backend": backend,
            "precision": precision,
            "default": default == (backend, precision),
            "vision_ms": round(_median(vis[1:]), 2),
            **_ours(pipe, image, n_new, runs),
        }
        if tower["gmacs"]:  # the tower's GMAC/s beside the ceiling of its precision's kernels
            ceiling = tower["int8" if precision in ("int8", "int4") else "fp32"]
            row["vision_gmacs_per_s"] = float(
                f"{tower['gmacs'] / row['vision_ms'] * 1000:.4g}"
            )  # a tiny tower's is < 1
            row["vision_of_ceiling"] = float(f"{row['vision_gmacs_per_s'] / ceiling:.3g}")
        a = bundle.find("decoder", backend, precision)[0]
        weights = sum(bundle.manifest["files"][f]["bytes"] for f in a.files if not f.endswith(".xml"))
        kv = kv_bytes_per_token(pipe) * (row["prompt_tokens"] + n_new // 2)
        row["step_bytes"] = int(weights + kv)
        row["step_floor_ms"] = round((weights + kv) / (bw * 1e9) * 1000, 3)
        in_place = "shared buffer" if a.runtime.get("kv_cache") == SHARED_BUFFER else "in place"
        row["kv_cache"] = "stateful" if pipe.kv_state else in_place if pipe.kv_in_place else "passed each step"
        log(f"{backend}/{precision}: decode after {', '.join(map(str, CONTEXTS))} tokens of context")
        row["decode_by_context"] = decode_by_context(pipe, CONTEXTS, max(n_new, 8), weights, bw)
        if ref_row is not None:
            row["tokens_match_pytorch"] = row["tokens"] == ref_row["tokens"]
            row["ttft_speedup"] = round(ref_row["ttft_ms"] / row["ttft_ms"], 2)
            if ref_row["decode_tokens_per_s"] and row["decode_tokens_per_s"]:
                row["decode_speedup"] = round(row["decode_tokens_per_s"] / ref_row["decode_tokens_per_s"], 2)
        rows.append(row)
    for r in rows:
        r.pop("tokens", None)
    return {
        "model": bundle.name,
        "bundle": str(bundle.root),
        "family": bundle.family,
        "env": environment(cfg.threads),
        "config": {"runs": runs, "max_new_tokens": n_new, "turn1": TURN1, "turn2": TURN2},
        "memory_bandwidth_gbs": round(bw, 1),
        "vision": tower,
        "default_variant": "/".join(default) if default else None,
        "chat": rows,
        "results": [],
        "accuracy": [],
    }


def vision_cost(bundle: Bundle, pipe, image, threads: int | None) -> dict[str, Any]:
    """The bench image's tiles through the vision tower: GMACs (from the fp32 graph) and this
    machine's fp32 / INT8 GEMM ceilings (GMAC/s), what each row's vision time is compared to."""
    from .roofline import ceilings, macs

    px = pipe.pixel_values([image])
    got = macs(str(bundle.path(bundle.components["vision"]["onnx"])), (("pixel_values", tuple(px.shape)),))
    ceil = ceilings(threads)
    return {
        "tiles": int(px.shape[0]),
        "gmacs": float(f"{got['gmacs']:.5g}"),
        "fp32": ceil["fp32_gmacs_per_s"],
        "int8": ceil["int8_gmacs_per_s"],
        "probe": ceil["probe"],
    }


def chat_table(report: dict[str, Any]):
    from rich.table import Table

    from .report import busy_note

    tower = report.get("vision") or {}
    vision = (
        f"; vision = {tower['tiles']} tile(s), {tower['gmacs']:.0f} GMACs, vs the ceiling here (fp32 "
        f"{tower['fp32']:.0f}, int8 {tower['int8']:.0f} GMAC/s)"
        if tower.get("gmacs")
        else ""
    )
    t = Table(
        title=f"{report['model']}: two-turn chat, {report['config']['max_new_tokens']} new tokens{busy_note(report)}",
        caption=f"floor = decode step bytes / {report['memory_bandwidth_gbs']} GB/s (copy bandwidth here){vision}; "
        "turn 2 kept = with the conversation's KV cache, recomputed = whole history prefilled",
    )
    for col in (
        "backend",
        "precision",
        "vision ms",
        "TTFT ms",
        "decode tok/s",
        "step ms",
        "floor ms",
        "turn-2 TTFT kept / recomputed",
        "speedup TTFT / decode",
        "tokens match",
        "decode by context: tok/s (of floor)",
    ):
        t.add_column(col, justify="right" if "ms" in col or "/" in col else "left")
    for r in report["chat"]:
        t.add_row(
            r["backend"],
            r["precision"],
            (
                f"{r['vision_ms']:.0f} ({r['vision_gmacs_per_s']:.3g} GMAC/s, {r['vision_of_ceiling']:.0%})"
                if "vision_of_ceiling" in r
                else str(r.get("vision_ms", "-"))
            ),
            f"{r['ttft_ms']:.1f}",
            str(r.get("decode_tokens_per_s", "-")),
            f"{r['step_ms']:.2f}",
            str(r.get("step_floor_ms", "-")),
            (
                f"{r['turn2_ttft_ms']:.1f} / {r['turn2_ttft_recomputed_ms']:.1f} ({r['turn2_kept_vs_recomputed']:.0%})"
                if "turn2_ttft_ms" in r
                else "-"
            ),
            (f"{r['ttft_speedup']:.2f}x / {r.get('decode_speedup', '-')}x" if "ttft_speedup" in r else "-"),
            {True: "yes", False: "NO"}.get(r.get("tokens_match_pytorch"), "-"),
            "  ".join(
                f"{c['context']}: {c['decode_tokens_per_s']} ({c['of_floor']:.0%})"
                for c in r.get("decode_by_context", [])
            )
            or "-",
        )
    return t
