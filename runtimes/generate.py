"""Greedy and beam-search generation in numpy over a KV-cached decoder step (no torch).

It reproduces transformers 5's ``generate(do_sample=False)``: ``_sample`` for greedy and the
vectorised ``_beam_search`` (top 2K candidates per item, finished hypotheses kept with a
length penalty, the same early-stopping heuristic), with the same defaults, so token ids are
identical to PyTorch's when the logits are.

The decoder is anything with the ``StepDecoder`` shape: ``start(batch_index, max_length)`` selects
the images (with repeats, for beams), empties the self-attention cache and may preallocate it for
``max_length`` positions; ``step(ids, positions)``
runs one forward over the new ids and returns the last position's logits; ``reorder(rows)``
gathers the cache rows (beam search). ``runtimes/caption.py`` implements it on a Session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from ..errors import InputError

NEG = np.float32(-1.0e9)


OnStep = Callable[[np.ndarray], np.ndarray | None]  # ids so far -> rows to stop (or None)


class StepDecoder(Protocol):
    def start(self, rows: np.ndarray, max_length: int) -> None: ...
    def step(self, input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray: ...
    def reorder(self, rows: np.ndarray) -> None: ...


MAX_BEAMS = 16


@dataclass
class GenerationConfig:
    """The subset of transformers' GenerationConfig the loop implements (same meanings)."""

    start_ids: list[int] = field(default_factory=list)  # decoder prompt: start token (+ prompt tokens)
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int = 0
    max_length: int | None = None  # prompt included, as in transformers
    max_new_tokens: int | None = None  # wins over max_length
    default_new_tokens: int = 20  # neither set: transformers 5 generates 20 new tokens ...
    max_positions: int | None = None  # ... capped by the model's max_position_embeddings
    min_length: int = 0
    min_new_tokens: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and v is not None}
        if isinstance(kw.get("eos_token_id"), int):
            kw["eos_token_id"] = [kw["eos_token_id"]]
        return cls(**kw)

    def replace(self, **kw) -> GenerationConfig:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update({k: v for k, v in kw.items() if v is not None})
        return GenerationConfig(**d)

    def total_length(self, prompt_len: int) -> int:
        if self.max_new_tokens is not None:
            return prompt_len + int(self.max_new_tokens)
        # the checkpoint's own defaults are capped by the position table (as transformers caps its
        # 20-token default); an explicit max_new_tokens past it is refused by check_length
        total = int(self.max_length) if self.max_length is not None else prompt_len + int(self.default_new_tokens)
        return min(total, int(self.max_positions)) if self.max_positions else total

    def check(self) -> None:
        if not 1 <= self.num_beams <= MAX_BEAMS:  # each beam is a batch row of K/V: 10^6 would exhaust memory
            raise InputError(f"num_beams must be between 1 and {MAX_BEAMS}, got {self.num_beams}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.start_ids:
            raise InputError("generation needs at least one start id")


# -- logits processors (transformers' semantics) ---------------------------------------------


def _process(scores: np.ndarray, seqs: np.ndarray, cur_len: int, prompt_len: int, cfg: GenerationConfig) -> np.ndarray:
    """scores (N, V) for the next token of seqs[:, :cur_len]; returns a processed copy when needed."""
    if cfg.repetition_penalty != 1.0:
        scores = scores.copy()
        rows = np.arange(len(seqs))[:, None]
        prev = seqs[:, :cur_len]
        s = scores[rows, prev]
        scores[rows, prev] = np.where(s < 0, s * cfg.repetition_penalty, s / cfg.repetition_penalty)
    n = cfg.no_repeat_ngram_size
    if n and cur_len + 1 >= n:
        scores = scores.copy()
        for r in range(len(seqs)):
            toks = seqs[r, :cur_len].tolist()
            prefix = tuple(toks[cur_len - n + 1 :]) if n > 1 else ()
            banned = [toks[i + n - 1] for i in range(cur_len - n + 1) if tuple(toks[i : i + n - 1]) == prefix]
            if banned:
                scores[r, banned] = -np.inf
    if cfg.eos_token_id:
        need = cur_len < cfg.min_length or (
            cfg.min_new_tokens is not None and cur_len - prompt_len < cfg.min_new_tokens
        )
        if need:
            scores = scores.copy()
            scores[:, cfg.eos_token_id] = -np.inf
    return scores


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest k per row, sorted descending (ties: lowest index first)."""
    if k < x.shape[1]:
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(x.shape[1]), x.shape).copy()
    vals = np.take_along_axis(x, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    idx = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(x, idx, axis=1), idx


def check_length(cfg: GenerationConfig, prompt_len: int) -> int:
    total = cfg.total_length(prompt_len)
    if total <= prompt_len:
        raise InputError(
            f"max_length {total} leaves no room after the {prompt_len} prompt ids: raise it or set max_new_tokens"
        )
    # past the position table (garbage or a crash); only an explicit max_new_tokens gets here,
    # total_length caps the checkpoint's defaults
    if cfg.max_positions and total > cfg.max_positions:
        raise InputError(
            f"max_new_tokens {cfg.max_new_tokens} runs past the model's {cfg.max_positions} positions: "
            f"with the {prompt_len}-token prompt at most {cfg.max_positions - prompt_len} new tokens"
        )
    return total


def max_new_tokens_limit(cfg: GenerationConfig) -> int | None:
    """The most new tokens the position table leaves after the start ids (None: no table known)."""
    return cfg.max_positions - len(cfg.start_ids) if cfg.max_positions else None


def _is_eos(tokens: np.ndarray, eos: np.ndarray) -> np.ndarray:
    """np.isin(tokens, eos) for a handful of eos ids: a broadcast compare, 3 us a call against isin's
    23 us (a small captioner's decode step is 0.1-0.3 ms, so isin was ~10% of it)."""
    return (tokens[..., None] == eos).any(axis=-1)


# -- greedy --------------------------------------------------------------------------------


def greedy(decoder: StepDecoder, batch: int, cfg: GenerationConfig, on_step: OnStep | None = None) -> np.ndarray:
    """(batch, L) token ids incl. the start ids, as transformers' greedy ``_sample``.

    ``on_step(seqs)`` (streaming) sees the ids so far after every step and may return a
    boolean mask of rows to stop now (their reader left); they end as if they had met eos.
    """
    cfg.check()
    prompt = np.asarray(cfg.start_ids, dtype=np.int64)
    p = len(prompt)
    max_len = check_length(cfg, p)
    seqs = np.full((batch, max_len), cfg.pad_token_id, dtype=np.int64)
    seqs[:, :p] = prompt
    decoder.start(np.arange(batch), max_len)
    eos = np.asarray(cfg.eos_token_id, dtype=np.int64)
    unfinished = np.ones(batch, dtype=bool)
    cur = p
    ids = seqs[:, :p]
    pos = np.tile(np.arange(p, dtype=np.int64), (batch, 1))
    while cur < max_len:
        logits = decoder.step(ids, pos)
        scores = _process(logits, seqs, cur, p, cfg)
        nxt = scores.argmax(axis=-1).astype(np.int64)
        if eos.size:
            nxt = np.where(unfinished, nxt, cfg.pad_token_id)
        seqs[:, cur] = nxt
        cur += 1
        if eos.size:
            unfinished &= ~_is_eos(nxt, eos)
        if on_step is not None:
            stop = on_step(seqs[:, :cur])
            if stop is not None:
                unfinished &= ~np.asarray(stop, dtype=bool)
        if not unfinished.any():
            break
        ids = nxt[:, None]
        pos = np.full((batch, 1), cur - 1, dtype=np.int64)
    return seqs[:, :cur]


# -- beam search ---------------------------------------------------------------------------


def beam_search(decoder: StepDecoder, batch: int, cfg: GenerationConfig) -> np.ndarray:
    """(batch, L) best hypothesis per item, as transformers 5's vectorised ``_beam_search``."""
    cfg.check()
    K = int(cfg.num_beams)
    prompt = np.asarray(cfg.start_ids, dtype=np.int64)
    p = len(prompt)
    max_length = check_length(cfg, p)
    eos = np.asarray(cfg.eos_token_id, dtype=np.int64)
    n_eos = eos.size
    keep = max(2, 1 + n_eos) * K
    top_mask = np.zeros(keep, dtype=bool)
    top_mask[:K] = True
    fill = cfg.pad_token_id if cfg.pad_token_id else (int(eos[0]) if n_eos else -1)  # transformers: `pad or eos[0]`
    running = np.full((batch, K, max_length), fill, dtype=np.int64)
    running[:, :, :p] = prompt
    sequences = running.copy()
    running_scores = np.zeros((batch, K), dtype=np.float32)
    running_scores[:, 1:] = NEG
    beam_scores = np.full((batch, K), NEG, dtype=np.float32)
    finished = np.zeros((batch, K), dtype=bool)
    heuristic = np.ones((batch, 1), dtype=bool)
    hits = np.zeros((batch, K), dtype=bool)
    running_idx = np.full((batch, K, max_length - p), -1, dtype=np.int64)
    beam_idx = running_idx.copy()
    decoder.start(np.repeat(np.arange(batch), K), max_length)
    cur = p
    ids = running[:, :, :p].reshape(batch * K, p)
    pos = np.tile(np.arange(p, dtype=np.int64), (batch * K, 1))
    flat = running.reshape(batch * K, max_length)
    while cur < max_length:
        logits = decoder.step(ids, pos)
        logp = log_softmax(logits)
        logp = _process(logp, flat, cur, p, cfg)
        V = logp.shape[-1]
        logp = logp.reshape(batch, K, V) + running_scores[:, :, None]
        logp = logp.reshape(batch, K * V)
        # c. top 2K continuations over all beams
        topk_lp, topk_i = _topk(logp, keep)
        src_beam = topk_i // V
        tok = topk_i % V
        topk_seqs = np.take_along_axis(running, src_beam[:, :, None], axis=1)
        topk_seqs[:, :, cur] = tok
        topk_bidx = np.take_along_axis(running_idx, src_beam[:, :, None], axis=1)
        topk_bidx[:, :, cur - p] = src_beam + (np.arange(batch) * K)[:, None]
        # d. which continuations stop here (eos or max_length)
        hits = _is_eos(tok, eos) if n_eos else np.zeros_like(tok, dtype=bool)
        if cur + 1 >= max_length:
            hits = np.ones_like(hits)
        # e. next running beams: best K that did not stop
        run_lp = topk_lp + hits.astype(np.float32) * NEG
        _, nxt = _topk(run_lp, K)
        running = np.take_along_axis(topk_seqs, nxt[:, :, None], axis=1)
        running_scores = np.take_along_axis(run_lp, nxt, axis=1)
        running_idx = np.take_along_axis(topk_bidx, nxt[:, :, None], axis=1)
        # f. finished hypotheses
        just = hits & top_mask[None, :]
        fin_lp = topk_lp / np.float32((cur + 1 - p) ** cfg.length_penalty)
        full = finished.all(axis=-1, keepdims=True) & (cfg.early_stopping is True)
        fin_lp = fin_lp + full.astype(np.float32) * NEG
        fin_lp = fin_lp + (~heuristic).astype(np.float32) * NEG
        fin_lp = fin_lp + (~just).astype(np.float32) * NEG
        m_seqs = np.concatenate([sequences, topk_seqs], axis=1)
        m_scores = np.concatenate([beam_scores, fin_lp], axis=1)
        m_bidx = np.concatenate([beam_idx, topk_bidx], axis=1)
        m_fin = np.concatenate([finished, just], axis=1)
        _, best = _topk(m_scores, K)
        sequences = np.take_along_axis(m_seqs, best[:, :, None], axis=1)
        beam_scores = np.take_along_axis(m_scores, best, axis=1)
        beam_idx = np.take_along_axis(m_bidx, best[:, :, None], axis=1)
        finished = np.take_along_axis(m_fin, best, axis=1)
        # g. next iteration: reorder the cache by the surviving beams' parents
        rows = running_idx[:, :, cur - p].reshape(-1)
        cur += 1
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            best_len = max_length - p
        else:
            best_len = cur - p
        best_running = running_scores[:, :1] / np.float32(best_len**cfg.length_penalty)
        worst_fin = np.where(finished, beam_scores.min(axis=1, keepdims=True), NEG)
        heuristic = heuristic & (best_running > worst_fin).any(axis=-1, keepdims=True)
        improvement = heuristic.any()
        open_beam = not (finished.all() and cfg.early_stopping is True)
        valid = not hits.all()
        if not (improvement and open_beam and valid):
            break
        decoder.reorder(rows)
        flat = running.reshape(batch * K, max_length)
        ids = running[:, :, cur - 1].reshape(batch * K, 1)
        pos = np.full((batch * K, 1), cur - 1, dtype=np.int64)
    best = sequences[:, 0, :]
    bidx = beam_idx[:, 0, :]
    gen = int(((bidx + 1) != 0).sum(axis=1).max()) if bidx.size else 0
    return best[:, : p + gen]


def generate(decoder: StepDecoder, batch: int, cfg: GenerationConfig, on_step: OnStep | None = None) -> np.ndarray:
    """Greedy or beam search by ``cfg.num_beams``; ``on_step`` streams greedy only (a beam's
    best hypothesis is known at the end), and is called once with the result after beam search."""
    if cfg.num_beams > 1:
        out = beam_search(decoder, batch, cfg)
        if on_step is not None:
            on_step(out)
        return out
    return greedy(decoder, batch, cfg, on_step)
