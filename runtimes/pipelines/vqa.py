"""Visual question answering on any backend: answer(images, questions). No torch.

Three graphs (see exporter/families/vqa.py): ``vision`` once per distinct image, ``question``
(the question encoded over the image -> the decoder's cross K/V) and the BLIP ``decoder`` step,
driven by the same numpy greedy / beam search as captions. Questions are batched by token length
and never padded: BLIP's decoder attends to every question token, so padding would change the
answer (transformers' batched generate does exactly that); each answer here is the model's answer
to that question alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import InputError
from ..generate import generate
from ..images import load_image
from ..manifest import DECODER_INFO, DICT, GENERATION, check_decoder_blocks
from ..tokenize import bad_unicode_at
from . import register
from .caption import CaptionPipeline, SessionDecoder
from .decoders import OnText, decoder_feeds_after
from .pipeline import Pipeline

MAX_QUESTION_CHARS = 2000
BENCH_QUESTION = "what is in the picture?"


@register
class VqaPipeline(CaptionPipeline):
    """``vision`` + ``question`` + ``decoder`` graphs of one VQA bundle on one (backend, precision)."""

    family = "vqa"
    task = "question-answering"
    capabilities = frozenset({Capability.ANSWER})
    components = ("vision", "question", "decoder")
    info_key = "vqa"
    manifest_blocks = {"preprocess": DICT, "tokenizer": DICT, "vqa": DECODER_INFO, "generation": GENERATION}
    manifest_cross = staticmethod(check_decoder_blocks("vqa"))
    quantization_policy = "vqa"

    # -- pieces ----------------------------------------------------------------------
    def question_ids(self, question: str) -> list[int]:
        """[CLS] question [SEP], as BlipProcessor tokenizes it."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("a question must be non-empty text")
        if len(question) > MAX_QUESTION_CHARS:
            raise InputError(f"a question is at most {MAX_QUESTION_CHARS} characters, got {len(question)}")
        if (at := bad_unicode_at(question)) is not None:  # the shell hands undecodable bytes over as lone surrogates
            raise InputError(f"the question is not valid UTF-8 / Unicode text (at character {at})")
        ids = self.tokenizer.encode(question).ids
        limit = int(self.info.get("max_question_tokens", 512))
        if len(ids) > limit:
            raise InputError(f"the question is {len(ids)} tokens; this model reads at most {limit}")
        return ids

    def image_embeds(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.sessions["vision"].run({"pixel_values": pixel_values})["image_embeds"]

    def cross_kv(self, image_embeds: np.ndarray, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        out = self.sessions["question"].run(
            {"input_ids": np.ascontiguousarray(input_ids, np.int64), "image_embeds": np.ascontiguousarray(image_embeds)}
        )
        return {n: out[n] for n in self.encoder_outputs}

    def _pairs(self, images: Sequence[Any], questions: Sequence[str] | str) -> tuple[list, list[str]]:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        if isinstance(questions, str):
            questions = [questions]
        images, questions = list(images), list(questions)
        if not images or not questions:
            raise InputError("give at least one image and one question")
        if len(questions) == 1 and len(images) > 1:
            questions = questions * len(images)  # one question about every image
        elif len(images) == 1 and len(questions) > 1:
            images = images * len(questions)  # several questions about one image (encoded once)
        elif len(images) != len(questions):
            raise InputError(
                f"{len(images)} images and {len(questions)} questions: give one question per image, "
                "one question for all, or one image for all"
            )
        return images, questions

    def answer_ids(
        self,
        images: Sequence[Any],
        questions: Sequence[str] | str,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        batch_size: int = 8,
        on_text: OnText | None = None,
    ) -> list[np.ndarray]:
        """Token ids per (image, question), start id included, like PyTorch generate on each pair."""
        images, questions = self._pairs(images, questions)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        cfg = self.config(max_new_tokens, num_beams)
        ids = [self.question_ids(q) for q in questions]
        # each distinct image object through the vision graph once
        index: dict[int, int] = {}
        distinct: list[Any] = []
        for im in images:
            if id(im) not in index:
                index[id(im)] = len(distinct)
                distinct.append(im)
        embeds = []
        for i in range(0, len(distinct), batch_size):
            embeds.append(self.image_embeds(self.preprocess([load_image(x) for x in distinct[i : i + batch_size]])))
        return self._generate(np.concatenate(embeds), [index[id(im)] for im in images], ids, cfg, batch_size, on_text)

    def _generate(
        self,
        emb: np.ndarray,
        rows_of: list[int],
        ids: list[list[int]],
        cfg,
        batch_size: int,
        on_text: OnText | None = None,
    ) -> list[np.ndarray]:
        """Answers for questions ``ids`` about images ``emb[rows_of[r]]``: question + decoder graphs."""
        groups: dict[int, list[int]] = defaultdict(list)  # equal question lengths batch without padding
        for r, q in enumerate(ids):
            groups[len(q)].append(r)
        out: list[np.ndarray | None] = [None] * len(ids)
        for rows in groups.values():
            for k in range(0, len(rows), batch_size):
                chunk = rows[k : k + batch_size]
                kv = self.cross_kv(emb[[rows_of[r] for r in chunk]], np.asarray([ids[r] for r in chunk], np.int64))
                dec = SessionDecoder(self.sessions["decoder"], self.info, kv)
                hook = self._chunk_streamer(chunk, on_text) if on_text is not None else None
                for r, seq in zip(chunk, generate(dec, len(chunk), cfg, hook)):
                    out[r] = seq
        return out  # type: ignore[return-value]

    def _chunk_streamer(self, rows: list[int], on_text: OnText):
        return self._streamer(0, len(rows), lambda j, text: on_text(rows[j], text))

    def answer(
        self,
        images: Sequence[Any],
        questions: Sequence[str] | str,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        batch_size: int = 8,
        on_text: OnText | None = None,
    ) -> list[str]:
        """Images (paths, bytes, PIL images, HxWx3 uint8 arrays) and questions -> one answer each.

        One question for many images, one image for many questions, or one each. ``on_text(i, text)``
        streams pair i's answer as it grows (greedy); returning False stops it.
        """
        return [
            self.decode(s) for s in self.answer_ids(images, questions, max_new_tokens, num_beams, batch_size, on_text)
        ]

    # -- what bench times --------------------------------------------------------------
    def bench_request(self, data, batch: int):
        """(pixels, question ids): the data set's images, each asked BENCH_QUESTION."""
        px = self.pixel_values(data.image_batch(batch))
        return px, np.tile(np.asarray(self.question_ids(BENCH_QUESTION), np.int64), (batch, 1))

    def bench_feeds(self, request) -> dict[str, dict[str, np.ndarray]]:
        px, ids = request
        emb = self.image_embeds(px)
        return {
            "vision": {"pixel_values": px},
            "question": {"input_ids": ids, "image_embeds": emb},
            "decoder": decoder_feeds_after(self, self.cross_kv(emb, ids), 8),
        }

    def bench_generate(
        self, request, max_new_tokens: int | None = None, num_beams: int | None = None
    ) -> list[np.ndarray]:
        """Whole answers from pixels (the image decode and resize are not timed, as for captions)."""
        px, ids = request
        cfg = self.config(max_new_tokens, num_beams)
        return self._generate(self.image_embeds(px), list(range(len(px))), ids.tolist(), cfg, len(px))

    # not a captioner (CAPTION is not declared): caption is the base's refusal, and the inherited
    # pieces of the caption loop that need an encoder graph are removed
    caption = Pipeline.caption
    generate_ids = encode = None  # type: ignore[assignment]
