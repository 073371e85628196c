"""Text tokenization for the device side: a ``tokenizer.json`` run by the ``tokenizers`` library.

No transformers here. ``TextTokenizer`` reproduces what
``CLIPTokenizer(texts, padding=True, truncation=True, max_length=L)`` returns (transformers
5; ``CLIPTokenizerFast`` before it): special tokens added by the file's post-processor
(``<|startoftext|> ... <|endoftext|>`` for CLIP), truncation to ``max_length`` that keeps
the end-of-text token last, right padding to the longest text of the batch with the pad
token, and an attention mask.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from mmdeploy.errors import BundleConfigError, BundleError, InputError

__all__ = ["TextTokenizer"]

PADDING = ("longest", "max_length")
_PAD_FALLBACKS = ("<|endoftext|>", "<pad>", "[PAD]", "</s>")


class TextTokenizer:
    """Batches of strings -> ``input_ids`` / ``attention_mask`` int64 arrays (N, L)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int, padding: str = "longest"):
        if padding not in PADDING:
            raise ValueError(f"padding must be one of {', '.join(PADDING)}, got {padding!r}")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        pad_token = tokenizer.id_to_token(pad_id)
        if pad_token is None:
            raise ValueError(f"pad id {pad_id} is not in the tokenizer's vocabulary")
        self.max_length = max_length
        self.pad_id = int(pad_id)
        self.pad_token = pad_token
        # Untouched copy for count_tokens (no truncation, no padding).
        self._raw = Tokenizer.from_str(tokenizer.to_str())
        self._raw.no_truncation()
        self._raw.no_padding()
        self._tok = tokenizer
        self._tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
        # "max_length": every row padded to max_length (SigLIP's text tower was trained so and takes no mask)
        self.padding = padding
        self._tok.enable_padding(
            direction="right",
            pad_id=self.pad_id,
            pad_token=pad_token,
            length=max_length if padding == "max_length" else None,
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, max_length: int, pad_id: int | None = None, padding: str = "longest"
    ) -> TextTokenizer:
        """Load a ``tokenizer.json`` (as saved by a fast HF tokenizer).

        ``pad_id`` defaults to the pad token named in ``tokenizer_config.json`` or
        ``special_tokens_map.json`` beside the file, else the file's own padding setting,
        else ``<|endoftext|>`` (CLIP pads with it), ``<pad>``, ``[PAD]`` or ``</s>``.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
            raise BundleError(f"cannot read tokenizer file {path}: {' '.join(str(exc).split())}") from None
        if pad_id is None:
            pad_id = _find_pad_id(tok, path)
            if pad_id is None:
                raise BundleError(f"tokenizer {path} names no pad token: pass pad_id")
        try:
            return cls(tok, max_length=max_length, pad_id=pad_id, padding=padding)
        except (ValueError, TypeError) as exc:  # max_length / pad_id from the manifest or the file
            raise BundleConfigError(f"tokenizer {path}: {exc}") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
        """Tokenize a batch (a lone ``str`` is a batch of one).

        Returns ``{"input_ids", "attention_mask"}``, int64 (N, L), L = the longest text of
        the batch in tokens, at most ``max_length``.
        """
        batch = _check_texts(texts)
        encs = self._tok.encode_batch(batch, add_special_tokens=True)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def count_tokens(self, texts: Sequence[str] | str) -> int | list[int]:
        """Tokens per text with special tokens, before truncation (an int for a lone str)."""
        batch = _check_texts(texts)
        counts = [len(e.ids) for e in self._raw.encode_batch(batch, add_special_tokens=True)]
        return counts[0] if isinstance(texts, str) else counts

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length}, pad_id={self.pad_id})"


def bad_unicode_at(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone surrogate: JSON "\\ud800", or
    command-line bytes that are not UTF-8), None for valid text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_texts(texts: Sequence[str] | str) -> list[str]:
    batch = [texts] if isinstance(texts, str) else texts
    if not isinstance(batch, (list, tuple)):
        raise InputError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    if not batch:
        raise InputError("no texts given: the list is empty")
    for i, t in enumerate(batch):
        where = "the text" if isinstance(texts, str) else f"texts[{i}]"
        if not isinstance(t, str):
            raise InputError(f"{where} is {type(t).__name__}, expected a string")
        if (at := bad_unicode_at(t)) is not None:
            raise InputError(f"{where} is not valid UTF-8 / Unicode text (at character {at})")
    return list(batch)


def _token_content(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _find_pad_id(tok: Tokenizer, path: Path) -> int | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg_path = path.with_name(name)
        if not cfg_path.is_file():
            continue
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        token = _token_content(cfg.get("pad_token")) if isinstance(cfg, dict) else None
        if token is not None and tok.token_to_id(token) is not None:
            return tok.token_to_id(token)
    if tok.padding is not None and tok.padding.get("pad_id") is not None:
        return int(tok.padding["pad_id"])
    for token in _PAD_FALLBACKS:
        if tok.token_to_id(token) is not None:
            return tok.token_to_id(token)
    return None
