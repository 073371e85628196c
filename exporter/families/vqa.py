"""vqa family: visual question answering, BLIP's ``BlipForQuestionAnswering`` (Salesforce/blip-vqa-base).

BLIP VQA encodes the image (ViT), then the question with a BERT encoder that cross-attends to
the image, and generates the answer with a BERT decoder that cross-attends to the encoded
question. Three graphs (names are the bundle's contract with ``runtimes/pipelines/vqa.py``):

- ``vision``: ``pixel_values`` -> ``image_embeds`` (B, image tokens, hidden), once per image, so
  several questions about one image share it.
- ``question``: ``input_ids`` (B, Q: [CLS] question [SEP]) + ``image_embeds`` -> the decoder's
  cross-attention K/V of the encoded question, ``cross.{i}.key|value`` (B, heads, Q, head_dim).
- ``decoder``: the caption family's BLIP step graph (``BlipStep``): ids + positions + past K/V +
  cross K/V -> last logits + present K/V.

transformers' generate attends to every question token in the decoder (its question mask is all
ones, padding included), so a padded batch's answers depend on the padding; the runtime groups
questions by token length instead and never pads: each answer is generate's on that question alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...common.capabilities import Capability
from ...errors import ExportError, require
from ..checkpoint import Checkpoint
from ..graph import export_onnx
from ..prune import VqaPruner
from . import register
from .caption import BlipFamily
from .decoders import PARITY_IMAGES, bert_cross_kv

torch = require("torch", "export")

PARITY_QUESTIONS = ["what is in the picture?", "how many animals are there?", "is it day or night?"]


class VqaVision(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.vision = model.vision_model

    def forward(self, pixel_values):
        return self.vision(pixel_values=pixel_values).last_hidden_state


class VqaQuestion(torch.nn.Module):
    """The question encoder over the image, projected into every decoder layer's cross K/V."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.text_encoder
        self.layers = model.text_decoder.bert.encoder.layer
        tc = model.config.text_config
        self.heads, self.head_dim = tc.num_attention_heads, tc.hidden_size // tc.num_attention_heads

    def forward(self, input_ids, image_embeds):
        mask = torch.ones(image_embeds.shape[:2], dtype=torch.long)
        q = self.encoder(
            input_ids=input_ids, encoder_hidden_states=image_embeds, encoder_attention_mask=mask
        ).last_hidden_state
        return bert_cross_kv(self.layers, q, self.heads, self.head_dim)


@register
class VqaFamily(BlipFamily):
    family = "vqa"
    architectures = {"BlipForQuestionAnswering": ("BlipForQuestionAnswering", "BlipConfig")}
    model_types = ()
    default_classes = ("BlipForQuestionAnswering", "BlipConfig")
    capabilities = frozenset({Capability.ANSWER, Capability.PRUNE})
    distiller = None
    pruner = VqaPruner  # --mlp: the image tower, and the question encoder + answer decoder together
    components = ("vision", "question", "decoder")
    outputs = {"vision": "image_embeds", "question": "cross_kv", "decoder": "logits"}
    arch = "blip-vqa"
    cross_axis = "question_tokens"

    @classmethod
    def create(cls, ckpt: Checkpoint):
        return cls(ckpt)

    def __init__(self, ckpt: Checkpoint):
        super().__init__(ckpt)
        tc = self.model.config.text_config
        width = self.model.config.vision_config.hidden_size
        if tc.encoder_hidden_size != width or tc.encoder_hidden_size != tc.hidden_size:
            # the question encoder cross-attends to the image and the decoder to the question
            # through layers of one width: transformers' own forward fails otherwise
            raise ExportError(
                f"{ckpt.source.get('path', ckpt.name)}: BLIP VQA needs text hidden_size = encoder_hidden_size"
                f" = vision hidden_size, got {tc.hidden_size} / {tc.encoder_hidden_size} / {width}"
            )
        self.max_question_tokens = int(getattr(tc, "max_position_embeddings", 512))

    # -- modules -------------------------------------------------------------------------
    def module(self, component: str):
        return {
            "vision": lambda: VqaVision(self.model),
            "question": lambda: VqaQuestion(self.model),
            "decoder": self.decoder_module,
        }[component]().eval()

    def question_ids(self, question: str) -> list[int]:
        """BlipProcessor's tokens: [CLS] question [SEP] (the tokenizer's own post-processor)."""
        return self.tokenizer.encode(question).ids

    def input_names(self, component: str) -> list[str]:
        if component == "vision":
            return ["pixel_values"]
        if component == "question":
            return ["input_ids", "image_embeds"]
        return super().input_names("decoder")

    def output_names(self, component: str) -> list[str]:
        if component == "vision":
            return ["image_embeds"]
        if component == "question":
            return self.kv_names("cross")
        return super().output_names("decoder")

    def specs(self, component: str) -> dict[str, list[dict[str, Any]]]:
        hidden = self.model.config.vision_config.hidden_size
        emb = {"name": "image_embeds", "dtype": "float32", "shape": ["batch", "image_tokens", hidden]}
        if component == "vision":
            h, w = self.preprocess.output_size or ("height", "width")
            return {
                "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, h, w]}],
                "outputs": [emb],
            }
        if component == "question":
            kv = {"dtype": "float32", "shape": ["batch", self.heads, "question_tokens", self.head_dim]}
            return {
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "question_tokens"]}, emb],
                "outputs": [{"name": n, **kv} for n in self.kv_names("cross")],
            }
        return super().specs("decoder")

    def export_component(self, component: str, module, path, log: Callable[[str], None] = lambda s: None) -> None:
        if component == "decoder":
            return super().export_component(component, module, path, log)
        feeds = self.feeds(component, 2)
        if component == "vision":
            axes = {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch", 1: "image_tokens"}}
        else:
            axes = {"input_ids": {0: "batch", 1: "question_tokens"}, "image_embeds": {0: "batch", 1: "image_tokens"}}
            axes.update({n: {0: "batch", 2: "question_tokens"} for n in self.kv_names("cross")})
        export_onnx(module, feeds, self.input_names(component), self.output_names(component), axes, path)

    # -- inputs --------------------------------------------------------------------------
    def _torch_run(self, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._torch(self.module(component), self.input_names(component), self.output_names(component), feeds)

    def question_feeds(self, pixel_values: np.ndarray, questions: list[str]) -> dict[str, np.ndarray]:
        """``question`` inputs: equal-length token rows (the questions' shared length), real image embeddings."""
        rows = [self.question_ids(q) for q in questions]
        n = min(len(r) for r in rows)
        ids = np.asarray([r[: n - 1] + r[-1:] for r in rows], np.int64)  # keep [SEP]: one length, no padding
        emb = self._torch_run("vision", {"pixel_values": pixel_values})["image_embeds"]
        return {"input_ids": ids, "image_embeds": emb}

    def encoder_kv(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        questions = [PARITY_QUESTIONS[i % len(PARITY_QUESTIONS)] for i in range(len(pixel_values))]
        return self._torch_run("question", self.question_feeds(pixel_values, questions))

    def feeds(self, component: str, batch: int, data=None) -> dict[str, np.ndarray]:
        from ...common.datasets.photos import photo_batch

        if component == "decoder":
            return self.parity_cases("decoder", batch)[0][1]
        imgs = data.image_batch(batch) if data is not None else photo_batch(batch)
        pixels = self.preprocess(imgs)
        if component == "vision":
            return {"pixel_values": pixels}
        return self.question_feeds(pixels, [PARITY_QUESTIONS[i % 3] for i in range(batch)])

    def parity_cases(self, component: str, batch: int = PARITY_IMAGES) -> list[tuple[str, dict[str, np.ndarray]]]:
        if component == "vision":
            return [(f"{batch} real photos", self.feeds("vision", batch))]
        if component == "question":
            return [(f"{batch} real photos with {batch} questions", self.feeds("question", batch))]
        return super().parity_cases("decoder", batch)

    def manifest_extra(self) -> dict[str, Any]:
        extra = super().manifest_extra()
        info = extra.pop("caption")
        info.update(encoder_outputs=self.output_names("question"), max_question_tokens=self.max_question_tokens)
        extra["vqa"] = info
        return extra

    def torch_generate(self, pixel_values, question_ids=None, **kw) -> list[np.ndarray]:
        """PyTorch's BlipForQuestionAnswering.generate per (image, question), questions of one
        length batched together (unpadded, as the runtime does), in input order."""
        groups: dict[int, list[int]] = {}
        for r, q in enumerate(question_ids):
            groups.setdefault(len(q), []).append(r)
        outs: list = [None] * len(question_ids)
        with torch.inference_mode():
            for rows in groups.values():
                got = self.model.generate(
                    pixel_values=torch.from_numpy(pixel_values[rows]),
                    input_ids=torch.tensor([list(question_ids[r]) for r in rows]),
                    do_sample=False,
                    **kw,
                )
                for r, seq in zip(rows, got.numpy()):
                    outs[r] = seq
        return outs

    def bench_generate(self, request, **kw):
        px, ids = request
        return self.torch_generate(px, ids.tolist(), **kw)

    def check_variants(self, w, threads: int | None, log: Callable[[str], None]) -> dict[str, Any]:
        """Greedy answers of every complete (backend, precision) vs PyTorch generate on real photos."""
        from dataclasses import asdict

        from ...common.datasets.photos import photo_batch
        from ...runtimes.bundle import Bundle
        from ...runtimes.pipelines.vqa import VqaPipeline

        manifest = {**w.manifest, "files": dict(w.files), "artifacts": [asdict(a) for a in w.artifacts]}
        bundle = Bundle(w.stage_dir, manifest)
        images = photo_batch(PARITY_IMAGES)
        questions = PARITY_QUESTIONS[:PARITY_IMAGES]
        pixels = self.preprocess(images)
        n = min(int(self.generation.get("max_new_tokens") or 8), 8)
        ref = self.torch_generate(pixels, [self.question_ids(q) for q in questions], max_new_tokens=n)
        results = {}
        for backend, precision in sorted({(a.backend, a.precision) for a in w.artifacts}):
            if len(bundle.find(backend=backend, precision=precision)) < len(self.components):
                continue
            pipe = VqaPipeline(bundle, backend, precision, threads=threads)
            got = pipe.answer_ids(images, questions, max_new_tokens=n, num_beams=1)
            same = all(len(a) == len(b) and (np.asarray(a) == np.asarray(b)).all() for a, b in zip(got, ref))
            results[f"{backend}/{precision}"] = same
            log(
                f"generate: {backend}/{precision} greedy answers {'match' if same else 'DIFFER from'} PyTorch "
                f"({PARITY_IMAGES} photos and questions, {n} new tokens)"
            )
        return {
            "greedy_tokens_match_pytorch": results,
            "images": f"{PARITY_IMAGES} real photos with questions",
            "max_new_tokens": n,
        }
