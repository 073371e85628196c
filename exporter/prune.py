"""Ratios are fractions KEPT: `--heads 0.5 --mlp 0.5` keeps half of every layer's attention heads and half of its MLP channels.

    mmdeploy prune clip-shapes -o students/clip-w50 --heads 0.5 --mlp 0.5 --data shapes

Structured width pruning (Minitron's recipe): rank attention heads and MLP channels by their
importance on a few calibration batches, remove the least important ones together with every
tensor coupled to them, save the result as the teacher's own transformers class with a smaller
config (uniform widths per tower, so ``from_pretrained`` and ``mmdeploy export`` take it as any
checkpoint), then recover by distillation from the unpruned teacher through the family's
distiller (exporter/distill.py's training loop: resumable, progress bar).

Importance (``method="activation"``, the default): an MLP channel scores mean |activation| x
|its fc2 column| (what it adds to the residual stream); a head scores the mean norm of its
output after the output projection; a residual (embedding) channel scores its mean |value|
after every LayerNorm of the tower. ``"weight"`` uses weight norms only, ``"random"`` is the
baseline the tests compare against.

Coupled dimensions: a head takes its q/k/v output rows and biases and its output-projection
input columns; an MLP channel its fc1 row and bias and its fc2 column (GPT-2's Conv1D stores
(in, out): the transposed axes).

How heads are removed depends on what the class can express (transformers 5 dropped
``prune_heads`` / ``config.pruned_heads`` everywhere):
- ViT (captioner encoders) reads ``config.head_dim``: heads go, the hidden size stays.
- CLIP derives head_dim = hidden_size / heads, so keeping fewer heads of the same head_dim means a
  narrower residual stream: the tower's hidden (embedding) channels are pruned with its heads,
  to heads x head_dim, ranked by the LayerNorm activations (Minitron's embedding axis). The
  projection to the shared embedding space keeps its output size, so image and text still meet.
- SigLIP (its embedding *is* the hidden state), BERT text embeddings (the same) and GPT-2
  decoders would change their output width that way: ``--heads`` is refused for them, ``--mlp``
  is supported.
- BLIP VQA derives head_dim the same way and its text towers cross-attend at the image tower's width:
  --mlp only, the question encoder and the answer decoder together (they share one text_config).
- SmolVLM / Idefics3: the vision tower's MLPs (--mlp), recovered by matching the image features the
  language model reads; the language model is kept whole.
ALIGN (EfficientNet convolutions) has no pruner.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..common.capabilities import Capability, names
from ..errors import CheckpointError, InputError, UnsupportedModelError, require
from .checkpoint import resolve, state_sha256
from .distill import (
    CaptionDistiller,
    ClipDistiller,
    DistillConfig,
    SentenceDistiller,
    Tower,
    VisionFeatureDistiller,
    VqaDistiller,
    _get,
    _training_data,
    _write_student,
    torch_device,
    train_student,
    training_samples,
    vqa_answers,
)

torch = require("torch", "export")

METHODS = ("activation", "weight", "random")
HEAD_MODES = ("head_dim", "embedding")  # the ways a tower's class can lose heads (TowerLayout.heads)
STATE_DIR_SUFFIX = ".prune-state"
# recovery lr without --lr: a cut residual (CLIP --heads) starts far from the teacher (14.6% top-1 on
# clip-shapes) and needs 3e-3 (1e-3: 55% after 64 steps, 3e-3: 66%); a cut MLP alone starts close
# (93.4%) and 3e-3 pushes it away (92.8% after 256 steps, 91% after 16, where 1e-3 kept >= 94%)
LR_HIDDEN_CUT, LR_MILD = 3e-3, 1e-3
# recovery passes without --epochs: a cut residual needs twice the steps (clip-shapes --heads 0.5 --mlp 0.25
# --towers vision: 96.2% after 8 epochs of 16384, 98.6% = the teacher after 16); an MLP cut keeps 8
EPOCHS_HIDDEN_CUT, EPOCHS_MILD = 16, 8
PLAN_FILE = "plan.json"


@dataclass
class PruneConfig:
    heads: float | None = None  # fraction of attention heads KEPT per layer, in (0, 1); None: all
    mlp: float | None = None  # fraction of MLP channels KEPT per layer, in (0, 1); None: all
    towers: tuple[str, ...] | None = None  # towers to prune (default: every tower the family's pruner knows)
    method: str = "activation"  # importance: activation | weight | random
    data: str = "shapes"
    calib_samples: int = 128  # calibration images (and as many texts) for the importance scores
    # recovery: 2048 steps of 64. Measured on clip-shapes --heads 0.5 --mlp 0.5 --towers vision (500 test
    # images, teacher 98.6%): steps and lr matter most: at 128 steps lr 1e-2 / 3e-3 55.8 / 79.2%; 3e-3 at
    # 512 / 2048 steps 91.0 / 97.8%; feature matching +1.2 points at 2x the step cost, 1024 calibration
    # images and 0.75-then-0.5 iterative pruning (86.8% at 512 steps) no better
    samples: int | None = 16384  # recovery images per epoch
    epochs: int | None = None  # recovery by distillation from the teacher; 0 = prune only; None: recovery_epochs
    batch_size: int = 64
    lr: float | None = None  # peak recovery lr; None: recovery_lr(plans)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    eval_images: int = 500

    def recipe(self) -> dict[str, Any]:
        """What must match for --resume to continue a run."""
        d = asdict(self)
        for k in ("threads", "device", "eval_images"):
            d.pop(k)
        d["towers"] = list(d["towers"]) if d["towers"] else None
        return d

    def distill_config(self) -> DistillConfig:
        """The recovery run, in the distiller's terms (every tower the pruner changed is trained)."""
        return DistillConfig(
            data=self.data,
            samples=self.samples,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr if self.lr is not None else LR_MILD,
            seed=self.seed,
            threads=self.threads,
            device=self.device,
            eval_images=self.eval_images,
        )


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class TowerLayout:
    """Where one tower's pieces are, in the teacher's state-dict names."""

    config: str | None  # sub-config attribute (None: the model's own config)
    prefixes: tuple[str, ...]  # state-dict prefixes that belong to the tower
    layers: str  # module path of the layer list
    attn: tuple[str, str, str, str] | None  # q, k, v, o child paths in a layer (Linear)
    mlp: tuple[str, str, bool]  # fc_in, fc_out child paths, Conv1D (GPT-2: weights stored (in, out))
    keys: tuple[str, str, str]  # config keys: hidden size, heads, MLP width
    heads: str  # "head_dim" (config.head_dim honoured), "embedding" (prune the residual too), or why not
    extra_mlps: tuple[str, ...] = ()  # further modules holding an MLP of the same width (SigLIP's pooling head)
    extra_layers: tuple[str, ...] = ()  # further layer lists whose MLPs share the width (one config key)


CLIP_TOWERS = {
    "vision": TowerLayout(
        "vision_config",
        ("vision_model.", "visual_projection."),
        "vision_model.encoder.layers",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        ("mlp.fc1", "mlp.fc2", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        "embedding",
    ),
    "text": TowerLayout(
        "text_config",
        ("text_model.", "text_projection."),
        "text_model.encoder.layers",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        ("mlp.fc1", "mlp.fc2", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        "embedding",
    ),
}
_SIGLIP_NO_HEADS = (
    "SigLIP's embedding is its hidden state and transformers derives head_dim = hidden_size / heads, "
    "so fewer heads would change the embedding width"
)
SIGLIP_TOWERS = {
    "vision": TowerLayout(
        "vision_config",
        ("vision_model.",),
        "vision_model.encoder.layers",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        ("mlp.fc1", "mlp.fc2", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        _SIGLIP_NO_HEADS,
        extra_mlps=("vision_model.head",),
    ),
    "text": TowerLayout(
        "text_config",
        ("text_model.",),
        "text_model.encoder.layers",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        ("mlp.fc1", "mlp.fc2", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        _SIGLIP_NO_HEADS,
    ),
}
CAPTION_TOWERS = {
    "vision": TowerLayout(
        "encoder",
        ("encoder.",),
        "encoder.layers",
        ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
        ("mlp.fc1", "mlp.fc2", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        "head_dim",
    ),
    "text": TowerLayout(
        "decoder",
        ("decoder.",),
        "decoder.transformer.h",
        None,
        ("mlp.c_fc", "mlp.c_proj", True),
        ("n_embd", "n_head", "n_inner"),
        "GPT-2 derives head_dim = n_embd / n_head and ties its width to the vocabulary projection",
    ),
}
_BLIP_NO_HEADS = (
    "BLIP derives head_dim = hidden_size / heads, and its question encoder and answer decoder cross-attend "
    "at the image tower's width"
)
VQA_TOWERS = {
    "vision": TowerLayout(
        "vision_config",
        ("vision_model.",),
        "vision_model.encoder.layers",
        None,
        ("mlp.fc1", "mlp.fc2", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        _BLIP_NO_HEADS,
    ),
    # the question encoder and the answer decoder share text_config, so their MLPs keep one width
    "text": TowerLayout(
        "text_config",
        ("text_encoder.", "text_decoder."),
        "text_encoder.encoder.layer",
        None,
        ("intermediate.dense", "output.dense", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        _BLIP_NO_HEADS,
        extra_layers=("text_decoder.bert.encoder.layer",),
    ),
}
VLM_TOWERS = {
    "vision": TowerLayout(
        "vision_config",
        ("model.vision_model.",),
        "model.vision_model.encoder.layers",
        None,
        ("mlp.fc1", "mlp.fc2", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        "the SigLIP vision tower derives head_dim = hidden_size / heads and its connector reads that width",
    ),
}
BERT_TOWERS = {
    "text": TowerLayout(
        None,
        ("",),
        "encoder.layer",
        None,
        ("intermediate.dense", "output.dense", False),
        ("hidden_size", "num_attention_heads", "intermediate_size"),
        "BERT's sentence embedding is its hidden state and transformers derives head_dim = hidden_size / heads",
    ),
}


# --------------------------------------------------------------------------- pruners (one per family layout)


class Pruner:
    """A family's pruning layout and its calibration pass; attached to the family as ``pruner``."""

    towers: ClassVar[dict[str, TowerLayout]] = {}
    what: ClassVar[str] = ""  # for messages: what this pruner prunes
    # the runner (exporter/distill.py) that recovers a pruned student from the teacher and scores it;
    # None: --epochs 0 only
    recovery: ClassVar[type | None] = None
    extra_files: ClassVar[tuple[str, ...]] = ()  # the teacher's files the pruned folder needs beside the tokenizer

    def __init__(self, fam, model):
        self.fam, self.model = fam, model
        for lay in self.towers.values():
            if not _has(model, lay.layers):
                raise UnsupportedModelError(
                    f"prune supports {self.what}; this {type(model).__name__} has no {lay.layers}"
                )

    def calibrate(self, data, n: int, device) -> None:
        """Forward passes over ``n`` calibration samples (the hooks record the activations)."""
        raise NotImplementedError

    def evaluator(self, teacher, student, cfg: DistillConfig, device, log):
        """What scores the student against the teacher: its recovery runner's evaluation."""
        towers = {n: Tower(n, 1, [0], 0, 0) for n in self.towers}
        return self.recovery(self.fam, teacher, student, towers, cfg, device, log)


def _pixels(fam, images, device):
    return torch.from_numpy(fam.preprocess(list(images))).to(device)


class ClipPruner(Pruner):
    towers = CLIP_TOWERS
    what = "CLIP vision and text towers: --heads (with the residual width) and --mlp"
    recovery = ClipDistiller

    def calibrate(self, data, n: int, device) -> None:
        rng = np.random.default_rng(0)
        texts = list(data.texts)
        texts = [texts[i] for i in rng.choice(len(texts), min(n, len(texts)), replace=False)]
        with torch.inference_mode():
            for i in range(0, min(n, len(data.images)), 64):
                self.model.get_image_features(pixel_values=_pixels(self.fam, data.images[i : min(i + 64, n)], device))
            for i in range(0, len(texts), 64):
                feeds = self.fam.tokenizer(texts[i : i + 64])
                self.model.get_text_features(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()})


class SiglipPruner(ClipPruner):
    towers = SIGLIP_TOWERS
    what = "SigLIP vision and text towers: --mlp"
    # CLIP's embedding and relational matching: a pruned MLP keeps every layer, so the student only has
    # to reproduce the teacher's embeddings (its sigmoid scale and bias stay the teacher's)
    recovery = ClipDistiller


class CaptionPruner(Pruner):
    towers = CAPTION_TOWERS
    what = "ViT + GPT-2 captioners: --heads (ViT encoder) and --mlp (encoder and decoder)"
    recovery = CaptionDistiller

    def __init__(self, fam, model):
        cfg = model.config
        kinds = (getattr(cfg, "encoder", None), getattr(cfg, "decoder", None))
        if type(model).__name__ != "VisionEncoderDecoderModel" or [getattr(k, "model_type", None) for k in kinds] != [
            "vit",
            "gpt2",
        ]:
            what = " + ".join(str(getattr(k, "model_type", "?")) for k in kinds) if kinds[0] else type(model).__name__
            raise UnsupportedModelError(f"prune supports {self.what}; this captioner is {what}")
        super().__init__(fam, model)

    def calibrate(self, data, n: int, device) -> None:
        with torch.inference_mode():  # greedy captions: the decoder sees the tokens it will generate
            for i in range(0, min(n, len(data.images)), 64):
                self.model.generate(
                    pixel_values=_pixels(self.fam, data.images[i : min(i + 64, n)], device), do_sample=False
                )


class VqaPruner(Pruner):
    towers = VQA_TOWERS
    what = "BLIP VQA: --mlp (the image tower; the question encoder and answer decoder together)"
    recovery = VqaDistiller

    def calibrate(self, data, n: int, device) -> None:
        qa = list(data.qa or [])[:n]
        if not qa:
            raise InputError(f"--data {data.name}: VQA pruning needs questions with answers ('shapes')")
        vqa_answers(self.fam, self.model, qa, device)  # greedy answers: the decoder sees the tokens it will generate


class VlmPruner(Pruner):
    towers = VLM_TOWERS
    what = "SmolVLM / Idefics3 chat models: --mlp on the vision tower (the language model is kept)"
    recovery = VisionFeatureDistiller
    extra_files = ("chat_template.jinja", "chat_template.json")  # the chat template export reads

    def calibrate(self, data, n: int, device) -> None:
        from .families.vlm import VlmVision

        vision, images = VlmVision(self.model).eval(), list(data.images)[:n]
        with torch.inference_mode():
            for i in range(0, len(images), 16):
                vision(torch.from_numpy(self.fam.pixel_values(images[i : i + 16])).to(device))


class TextEmbeddingPruner(Pruner):
    towers = BERT_TOWERS
    what = "BERT text embeddings: --mlp"
    recovery = SentenceDistiller
    # sentence-transformers' pooling and normalisation: without them export would pool differently
    extra_files = (
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "vocab.txt",
    )

    def calibrate(self, data, n: int, device) -> None:
        with torch.inference_mode():
            texts = list(data.texts)[:n]
            for i in range(0, len(texts), 64):
                feeds = self.fam.tokenizer(texts[i : i + 64])
                self.model(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()})


# --------------------------------------------------------------------------- importance


@dataclass
class TowerPlan:
    """What one tower keeps: indices into the teacher's heads, MLP channels and hidden channels."""

    name: str
    hidden: int
    heads: int
    head_dim: int
    mlp: int
    layers: int
    kept_heads: list[list[int]] = field(default_factory=list)  # per layer
    kept_mlp: dict[str, list[int]] = field(default_factory=dict)  # MLP module path -> channels kept
    kept_hidden: list[int] | None = None  # residual channels kept (CLIP's embedding axis)
    heads_mode: str = ""

    @property
    def changed(self) -> bool:
        return bool(
            (self.kept_heads and any(len(k) < self.heads for k in self.kept_heads))
            or any(len(k) < self.mlp for k in self.kept_mlp.values())
            or (self.kept_hidden is not None and len(self.kept_hidden) < self.hidden)
        )


def _mlp_sites(model, lay: TowerLayout) -> list[str]:
    """Modules that hold ``<site>.<fc_in>`` and ``<site>.<fc_out>``: every layer, and any extra MLP."""
    layers = [f"{path}.{i}" for path in (lay.layers, *lay.extra_layers) for i in range(len(_get(model, path)))]
    return layers + [s for s in lay.extra_mlps if _has(model, s)]


def _has(model, path: str) -> bool:
    try:
        _get(model, path)
        return True
    except AttributeError:
        return False


def importance(
    pruner: Pruner, data, towers: dict[str, TowerLayout], method: str = "activation", n: int = 128, device=None, seed=0
) -> dict[str, dict[str, Any]]:
    """Scores per tower: {"heads": [per layer: tensor(H)], "mlp": {site: tensor(M)}, "hidden": tensor(E) or None}.

    Higher = more important. ``activation`` runs ``n`` calibration samples through the teacher with
    hooks; ``weight`` reads weight norms; ``random`` draws (the baseline)."""
    if method not in METHODS:
        raise InputError(f"--importance {method!r}: choose {', '.join(METHODS)}")
    model = pruner.model
    device = device or torch.device("cpu")
    scores: dict[str, dict[str, Any]] = {}
    hooks, sums = [], {}

    def add(key, value):
        s = sums.setdefault(key, [0.0, 0])
        s[0] = s[0] + value.double().cpu()
        s[1] += 1

    for tname, lay in towers.items():
        sub = model.config if lay.config is None else getattr(model.config, lay.config)
        hidden, n_heads = int(getattr(sub, lay.keys[0])), int(getattr(sub, lay.keys[1]))
        mlp_sites = _mlp_sites(model, lay)
        n_layers = len(_get(model, lay.layers))
        fc_in, fc_out, conv1d = lay.mlp
        for site in mlp_sites:
            out_mod = _get(model, f"{site}.{fc_out}")
            w = out_mod.weight.detach()
            col_norm = w.norm(dim=1) if conv1d else w.norm(dim=0)  # per MLP channel: its weight into the residual
            if method == "activation":

                def mlp_hook(mod, args, tname=tname, site=site, col_norm=col_norm):
                    a = args[0].detach().reshape(-1, args[0].shape[-1])
                    add(("mlp", tname, site), a.abs().mean(0) * col_norm.to(a.dtype))

                hooks.append(out_mod.register_forward_pre_hook(mlp_hook))
            else:
                in_mod = _get(model, f"{site}.{fc_in}")
                row = in_mod.weight.detach().norm(dim=0 if conv1d else 1)
                sums[("mlp", tname, site)] = [(row * col_norm).double(), 1]
        if lay.attn is not None:
            d = int(getattr(sub, "head_dim", None) or hidden // n_heads)
            for i in range(n_layers):
                o = _get(model, f"{lay.layers}.{i}.{lay.attn[3]}")
                w_o = o.weight.detach().reshape(o.weight.shape[0], n_heads, d)  # (E, H, d)
                if method == "activation":

                    def head_hook(mod, args, tname=tname, i=i, w_o=w_o, n_heads=n_heads, d=d):
                        x = args[0].detach().reshape(-1, n_heads, d)  # (tokens, H, d)
                        contrib = torch.einsum("thd,ehd->the", x, w_o.to(x.dtype)).norm(dim=-1)
                        add(("heads", tname, i), contrib.mean(0))

                    hooks.append(o.register_forward_pre_hook(head_hook))
                else:
                    sums[("heads", tname, i)] = [w_o.norm(dim=(0, 2)).double(), 1]
            if lay.heads == "embedding":
                lns = [
                    m
                    for nm, m in model.named_modules()
                    if isinstance(m, torch.nn.LayerNorm) and any(nm.startswith(p) for p in lay.prefixes)
                ]
                for m in lns:
                    if method == "activation":

                        def ln_hook(mod, args, out, tname=tname):
                            add(("hidden", tname), out.detach().reshape(-1, out.shape[-1]).abs().mean(0))

                        hooks.append(m.register_forward_hook(ln_hook))
                    else:
                        prev = sums.get(("hidden", tname), [0.0, 0])[0]
                        sums[("hidden", tname)] = [prev + m.weight.detach().abs().double(), 1]
        scores[tname] = {"heads": [], "mlp": {s: None for s in mlp_sites}, "hidden": None, "hidden_size": hidden}
        scores[tname]["n_layers"] = n_layers
    if method == "activation":
        try:
            pruner.calibrate(data, n, device)
        finally:
            for h in hooks:
                h.remove()
    gen = torch.Generator().manual_seed(seed)
    for key, (total, count) in sums.items():
        v = total / max(1, count)
        if method == "random":
            v = torch.rand(v.shape, generator=gen, dtype=torch.float64)
        kind, tname = key[0], key[1]
        if kind == "mlp":
            scores[tname]["mlp"][key[2]] = v
        elif kind == "heads":
            scores[tname]["heads"].append((key[2], v))
        else:
            scores[tname]["hidden"] = v
    for s in scores.values():
        s["heads"] = [v for _, v in sorted(s["heads"], key=lambda t: t[0])]
        missing = [site for site, v in s["mlp"].items() if v is None]
        if missing:
            raise CheckpointError(f"no calibration activations reached {missing[0]}: the calibration pass skipped it")
    return scores


def _top(score, k: int) -> list[int]:
    return sorted(score.topk(k).indices.tolist())


def _keep_count(ratio: float, total: int, flag: str, what: str) -> int:
    k = int(ratio * total + 0.5)  # half up (round() would make 0.25 of 2 heads none)
    if k < 1:
        raise InputError(f"{flag} {ratio:g} keeps no {what} of {total}: give at least {1 / total:.3g}")
    return k


def check_ratios(cfg: PruneConfig) -> None:
    """Ratios in (0, 1), a known importance method, something to prune; before anything is loaded."""
    for flag, r in (("--heads", cfg.heads), ("--mlp", cfg.mlp)):
        if r is not None and not 0 < r < 1:
            raise InputError(f"{flag} {r:g}: give the fraction to keep, in (0, 1) (e.g. 0.5 keeps half)")
    if cfg.heads is None and cfg.mlp is None:
        raise InputError("nothing to prune: give --heads and/or --mlp (fractions kept, e.g. 0.5)")
    if cfg.method not in METHODS:
        raise InputError(f"--importance {cfg.method!r}: choose {', '.join(METHODS)}")
    if cfg.epochs is not None and cfg.epochs < 0:
        raise InputError(f"--epochs {cfg.epochs}: give 0 (prune only) or more")
    if cfg.calib_samples < 1:
        raise InputError(f"--calib-samples {cfg.calib_samples}: give 1 or more")


def _counts(model, cfg: PruneConfig, towers: dict[str, TowerLayout]) -> dict[str, dict[str, int]]:
    """Per tower: hidden, heads, head_dim, MLP width and how many heads / channels are kept."""
    out = {}
    for tname, lay in towers.items():
        sub = model.config if lay.config is None else getattr(model.config, lay.config)
        hidden, n_heads = int(getattr(sub, lay.keys[0])), int(getattr(sub, lay.keys[1]))
        width = int(getattr(sub, lay.keys[2], None) or 4 * hidden)
        c = {"hidden": hidden, "heads": n_heads, "head_dim": int(getattr(sub, "head_dim", None) or hidden // n_heads)}
        c["mlp"] = width
        c["keep_heads"] = (
            _keep_count(cfg.heads, n_heads, "--heads", f"{tname} attention head (per layer)")
            if cfg.heads is not None and lay.heads in HEAD_MODES
            else n_heads
        )
        c["keep_mlp"] = _keep_count(cfg.mlp, width, "--mlp", f"{tname} MLP channel") if cfg.mlp is not None else width
        out[tname] = c
    return out


def plan(pruner: Pruner, cfg: PruneConfig, scores: dict[str, dict[str, Any]], family: str) -> dict[str, TowerPlan]:
    """Which heads / channels each tower keeps (uniform counts per tower: one smaller config)."""
    chosen = _chosen(pruner, cfg, family)
    plans = {}
    for tname, c in _counts(pruner.model, cfg, chosen).items():
        lay, sc = chosen[tname], scores[tname]
        p = TowerPlan(tname, c["hidden"], c["heads"], c["head_dim"], c["mlp"], sc["n_layers"], heads_mode=lay.heads)
        if c["keep_heads"] < c["heads"]:
            p.kept_heads = [_top(s, c["keep_heads"]) for s in sc["heads"]]
            if lay.heads == "embedding":
                p.kept_hidden = _top(sc["hidden"], c["keep_heads"] * c["head_dim"])
        if c["keep_mlp"] < c["mlp"]:
            p.kept_mlp = {site: _top(s, c["keep_mlp"]) for site, s in sc["mlp"].items()}
        plans[tname] = p
    return plans


def _chosen(pruner: Pruner, cfg: PruneConfig, family: str) -> dict[str, TowerLayout]:
    """The towers to prune. --heads applies to the towers whose class can drop heads: named
    explicitly, a tower that cannot is an error; by default such a tower keeps its heads (said in
    the log), and a family where no tower can is an error."""
    unknown = [t for t in cfg.towers or () if t not in pruner.towers]
    if unknown:
        raise InputError(f"--towers {','.join(cfg.towers)}: {family} has the towers {', '.join(pruner.towers)}")
    chosen = {t: pruner.towers[t] for t in cfg.towers} if cfg.towers else dict(pruner.towers)
    if cfg.heads is not None:
        can = [t for t, lay in pruner.towers.items() if lay.heads in HEAD_MODES]
        cannot = [t for t, lay in chosen.items() if lay.heads not in HEAD_MODES]
        if cannot and (cfg.towers or not any(t in chosen for t in can)):
            t = cannot[0]
            raise InputError(
                f"--heads on the {family} {t} tower: {chosen[t].heads}; it takes --mlp"
                + (f" (--heads works on --towers {','.join(can)})" if can else "")
            )
    return chosen


# --------------------------------------------------------------------------- the smaller model


def student_config(teacher, towers: dict[str, TowerLayout], plans: dict[str, TowerPlan]):
    cfg = copy.deepcopy(teacher.config)
    for tname, p in plans.items():
        lay = towers[tname]
        sub = cfg if lay.config is None else getattr(cfg, lay.config)
        if p.kept_heads:
            setattr(sub, lay.keys[1], len(p.kept_heads[0]))
            if lay.heads == "head_dim":
                sub.head_dim = p.head_dim  # ViT reads it: the hidden size stays
        if p.kept_hidden is not None:
            setattr(sub, lay.keys[0], len(p.kept_hidden))
        if p.kept_mlp:
            setattr(sub, lay.keys[2], len(next(iter(p.kept_mlp.values()))))
    return cfg


def build_pruned(teacher, towers: dict[str, TowerLayout], plans: dict[str, TowerPlan]):
    """The teacher's class with the smaller config, every tensor sliced from the teacher's (strict)."""
    student = type(teacher)(student_config(teacher, towers, plans))
    want = student.state_dict()
    new = {}
    for key, value in teacher.state_dict().items():
        if key not in want:
            continue
        if tuple(value.shape) == tuple(want[key].shape):
            new[key] = value.clone()
            continue
        tname = next((t for t, lay in towers.items() if t in plans and key.startswith(lay.prefixes)), None)
        if tname is None:
            raise CheckpointError(f"{key}: shape {tuple(value.shape)} changed outside the pruned towers")
        out = value
        for dim in range(value.dim()):
            if out.shape[dim] == want[key].shape[dim]:
                continue
            idx = _axis(key, dim, value, towers[tname], plans[tname])
            out = out.index_select(dim, torch.tensor(idx))
        if tuple(out.shape) != tuple(want[key].shape):
            raise CheckpointError(
                f"{key}: sliced to {tuple(out.shape)}, the pruned class wants {tuple(want[key].shape)}"
            )
        new[key] = out.clone()
    missing, unexpected = student.load_state_dict(new, strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise CheckpointError(f"pruning left tensors unmatched: missing {missing[:3]}, unexpected {unexpected[:3]}")
    student.tie_weights()
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval()


def _axis(key: str, dim: int, value, lay: TowerLayout, p: TowerPlan) -> list[int]:
    """The teacher indices kept along ``dim`` of ``key``: heads, MLP channels or hidden channels."""
    is_bias = key.endswith(".bias")
    m = re.match(re.escape(lay.layers) + r"\.(\d+)\.(.+)\.(weight|bias)$", key)
    if m and lay.attn is not None and p.kept_heads:
        i, child = int(m.group(1)), m.group(2)
        cols = [h * p.head_dim + j for h in p.kept_heads[i] for j in range(p.head_dim)]
        if child in lay.attn[:3] and dim == 0:  # q/k/v: output rows (and biases)
            return cols
        if child == lay.attn[3] and dim == 1 and not is_bias:  # o-proj: input columns
            return cols
    fc_in, fc_out, conv1d = lay.mlp
    for site, units in p.kept_mlp.items():
        if key.startswith(f"{site}.{fc_in}."):  # fc1: output rows + bias (Conv1D: columns)
            if dim == (1 if conv1d and not is_bias else 0):
                return units
        if key == f"{site}.{fc_out}.weight" and dim == (0 if conv1d else 1):  # fc2: input columns (Conv1D: rows)
            return units
    if p.kept_hidden is not None and value.shape[dim] == p.hidden:
        return p.kept_hidden
    raise CheckpointError(f"{key}: no rule says which indices of dim {dim} to keep")


def _hidden_cut(plans: dict[str, TowerPlan]) -> bool:
    return any(p.kept_hidden is not None for p in plans.values())


def recovery_lr(plans: dict[str, TowerPlan]) -> float:
    """The peak lr when --lr is not given: LR_HIDDEN_CUT where a tower's residual width was cut, else LR_MILD."""
    return LR_HIDDEN_CUT if _hidden_cut(plans) else LR_MILD


def recovery_epochs(plans: dict[str, TowerPlan]) -> int:
    """Recovery passes when --epochs is not given: EPOCHS_HIDDEN_CUT where a residual width was cut."""
    return EPOCHS_HIDDEN_CUT if _hidden_cut(plans) else EPOCHS_MILD


def _to_tower(p: TowerPlan) -> Tower:
    """The distiller's view of a pruned tower (every layer kept; trained when it changed)."""
    widths = [len(k) for k in p.kept_mlp.values()]
    return Tower(p.name, p.layers, list(range(p.layers)), p.mlp, widths[0] if widths else p.mlp, trainable=p.changed)


# --------------------------------------------------------------------------- the run


def prune(
    teacher_source: str,
    out: Path,
    cfg: PruneConfig,
    *,
    random_weights: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress=None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Prune `teacher_source` into a checkpoint folder at `out`, recover it by distillation; returns
    the report (also prune.json, and a card README.md, beside the weights)."""
    from ..common.locks import writer_lock

    check_ratios(cfg)
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "prune.json").is_file():
        raise InputError(f"{out} exists and is not a pruned checkpoint: refusing to replace it")
    state_dir = out.parent / f"{out.name}{STATE_DIR_SUFFIX}"
    if (state_dir / PLAN_FILE).is_file() and not resume:
        raise InputError(f"{state_dir} holds an interrupted run: pass --resume to continue it, or delete it")
    from ..common.datasets import check_spec

    check_spec(cfg.data, "--data")
    with writer_lock(out, "pruned checkpoint"):
        return _prune(teacher_source, out, cfg, state_dir, random_weights, resume, log, progress, on_epoch_end)


def _prune(teacher_source, out, cfg, state_dir, random_weights, resume, log, progress, on_epoch_end):
    from .families import families_that, family_exporter

    dcfg = cfg.distill_config()
    device = torch_device(cfg.device, cfg.threads)
    log(f"loading teacher {teacher_source}{' (random weights)' if random_weights else ''}")
    ckpt = resolve(teacher_source, random_weights=random_weights)
    teacher = ckpt.model.eval()
    fam = family_exporter(ckpt)
    if not fam.can(Capability.PRUNE):
        raise UnsupportedModelError(
            f"{teacher_source}: the {fam.family} family has no pruner (prune takes {names(families_that(Capability.PRUNE))})"
        )
    if cfg.epochs != 0 and fam.pruner.recovery is None:
        raise InputError(
            f"{teacher_source}: the {fam.family} pruner has no recovery yet: pass --epochs 0 to prune without recovery"
        )
    pruner = fam.pruner(fam, teacher)
    chosen = _chosen(pruner, cfg, fam.family)
    _counts(pruner.model, cfg, chosen)  # a ratio that leaves nothing fails before minutes of work
    reads_images = pruner.recovery.reads_images if pruner.recovery else True
    train, held = _training_data(dcfg if cfg.epochs != 0 else _calib_only(dcfg, cfg), images=reads_images)
    teacher.to(device)

    torch.manual_seed(cfg.seed)
    recipe = {
        **cfg.recipe(),
        "teacher": teacher_source,
        "teacher_sha256": ckpt.source.get("weights_sha256") or state_sha256(teacher),
        "random_weights": random_weights,
    }
    plan_path = state_dir / PLAN_FILE
    if resume and plan_path.is_file():  # the kept indices of the interrupted run, not recomputed
        saved = json.loads(plan_path.read_text())
        if saved["recipe"] != recipe:
            diff = sorted(k for k in set(saved["recipe"]) | set(recipe) if saved["recipe"].get(k) != recipe.get(k))
            raise InputError(
                f"{state_dir} was made with a different recipe ({', '.join(diff)} differ): rerun with the same options or delete it"
            )
        plans = {t: TowerPlan(**p) for t, p in saved["plans"].items()}
        log(f"resuming: the pruning plan of {state_dir}")
    else:
        t0 = time.time()
        log(
            f"importance ({cfg.method}) from {min(cfg.calib_samples, training_samples(train))} calibration samples of {cfg.data}"
        )
        scores = importance(pruner, train, chosen, cfg.method, cfg.calib_samples, device, cfg.seed)
        plans = plan(pruner, cfg, scores, fam.family)
        log(f"importance: {time.time() - t0:.1f} s")
    dcfg.lr = cfg.lr if cfg.lr is not None else recovery_lr(plans)
    dcfg.epochs = epochs = cfg.epochs if cfg.epochs is not None else recovery_epochs(plans)
    student = build_pruned(teacher.cpu(), chosen, plans).to(device)
    teacher.to(device)
    for p in plans.values():
        log(_describe(p))
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    log(f"pruned: {n_student / 1e6:.2f}M parameters, teacher {n_teacher / 1e6:.2f}M ({n_student / n_teacher:.0%})")

    evaluator = pruner.evaluator(teacher, student, dcfg, device, log)
    before = None
    history, train_s = [], 0.0
    if epochs > 0:
        if not (resume and plan_path.is_file()):
            before = evaluator.evaluate(held or train)
            log(f"before recovery: {_headline(before)}")
            state_dir.mkdir(parents=True, exist_ok=True)
            tmp = plan_path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"recipe": recipe, "plans": {t: asdict(p) for t, p in plans.items()}, "before": before})
            )
            tmp.replace(plan_path)
        else:
            before = json.loads(plan_path.read_text()).get("before")
        towers = {n: _to_tower(p) for n, p in plans.items()}
        for n in pruner.towers:  # towers left whole stay frozen copies
            towers.setdefault(n, Tower(n, 1, [0], 0, 0, trainable=False))
        runner = pruner.recovery(fam, teacher, student, towers, dcfg, device, log)
        runner.prepare(train)
        history, train_s = train_student(
            runner,
            student,
            training_samples(train),
            dcfg,
            state_dir,
            recipe,
            device,
            resume,
            log,
            progress,
            on_epoch_end,
            "recover",
        )
    student.eval()
    log("evaluating the pruned student vs the teacher")
    fidelity = evaluator.evaluate(held or train)
    log(_headline(fidelity))
    report = {
        "kept_fractions": "ratios are fractions kept",
        "teacher": {"source": ckpt.source, "name": ckpt.name, "parameters": n_teacher},
        "student": {
            "parameters": n_student,
            "ratio": round(n_student / n_teacher, 4),
            "towers": {n: _tower_report(p) for n, p in plans.items()},
        },
        "importance": {
            "method": cfg.method,
            "calibration": f"{min(cfg.calib_samples, training_samples(train))} samples of {cfg.data}",
            "scores": {
                "activation": "MLP channel: mean |activation| x |fc2 column|; head: mean norm of its output after the "
                "output projection; hidden channel: mean |LayerNorm output| over the tower",
                "weight": "weight norms only",
                "random": "random ranks (baseline)",
            }[cfg.method],
        },
        "recovery": {
            "epochs": epochs,
            "lr": dcfg.lr,
            "steps": (training_samples(train) // cfg.batch_size) * epochs,
            "samples_per_epoch": training_samples(train) if epochs else 0,
            "method": f"distillation from the unpruned teacher ({pruner.recovery.__name__})" if epochs else "none",
            "history": history,
            "seconds": round(train_s, 1),
        },
        "recipe": recipe,
        "device": str(device),
        "fidelity_before_recovery": before,
        "fidelity": fidelity,
        "sizes": {"teacher_bytes": _bytes(teacher), "student_bytes": _bytes(student)},
    }
    _write_student(
        student.to("cpu"), ckpt, out, report, report_file="prune.json", card=prune_card, extra_files=pruner.extra_files
    )
    shutil.rmtree(state_dir, ignore_errors=True)
    return report


def _calib_only(dcfg: DistillConfig, cfg: PruneConfig) -> DistillConfig:
    """Without recovery only the calibration samples are read."""
    c = copy.copy(dcfg)
    c.samples = max(cfg.calib_samples, cfg.batch_size)
    return c


def _bytes(model) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def _headline(f: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("eval_data", "eval_images", "eval_texts"))


def _tower_report(p: TowerPlan) -> dict[str, Any]:
    r: dict[str, Any] = {
        "layers": p.layers,
        "heads": len(p.kept_heads[0]) if p.kept_heads else p.heads,
        "teacher_heads": p.heads,
        "head_dim": p.head_dim,
        "hidden": len(p.kept_hidden) if p.kept_hidden is not None else p.hidden,
        "teacher_hidden": p.hidden,
        "mlp": len(next(iter(p.kept_mlp.values()))) if p.kept_mlp else p.mlp,
        "teacher_mlp": p.mlp,
        "trained": p.changed,
    }
    if p.kept_heads:
        r["heads_realised_as"] = {
            "head_dim": "config.head_dim kept, hidden size unchanged",
            "embedding": "hidden (residual) channels pruned to heads x head_dim, head_dim unchanged",
        }[p.heads_mode]
        r["removed_heads"] = {str(i): sorted(set(range(p.heads)) - set(k)) for i, k in enumerate(p.kept_heads)}
    if p.kept_hidden is not None:
        r["removed_hidden_channels"] = sorted(set(range(p.hidden)) - set(p.kept_hidden))
    if p.kept_mlp:
        r["removed_mlp_channels"] = {site: len(set(range(p.mlp)) - set(k)) for site, k in p.kept_mlp.items()}
    return r


def _describe(p: TowerPlan) -> str:
    r = _tower_report(p)
    parts = []
    if r["heads"] != r["teacher_heads"]:
        parts.append(f"heads {r['heads']} of {r['teacher_heads']}")
    if r["hidden"] != r["teacher_hidden"]:
        parts.append(f"hidden {r['hidden']} of {r['teacher_hidden']}")
    if r["mlp"] != r["teacher_mlp"]:
        parts.append(f"MLP {r['mlp']} of {r['teacher_mlp']}")
    return f"{p.name}: " + (", ".join(parts) or "unchanged") + f" ({p.layers} layers)"


def prune_card(r: dict[str, Any]) -> str:
    t, s, rec, recov = r["teacher"], r["student"], r["recipe"], r["recovery"]
    rows = "\n".join(
        f"| {n} | {v['heads']} of {v['teacher_heads']} | {v['hidden']} of {v['teacher_hidden']} | "
        f"{v['mlp']} of {v['teacher_mlp']} | {v.get('heads_realised_as', '-')} |"
        for n, v in s["towers"].items()
    )
    removed = "\n".join(
        f"- {n}: heads removed per layer {v['removed_heads']}" for n, v in s["towers"].items() if v.get("removed_heads")
    )
    fid = "\n".join(
        f"| {k} | {(r['fidelity_before_recovery'] or {}).get(k, '-')} | {v} |" for k, v in r["fidelity"].items()
    )
    flags = " ".join(
        f"--{k.replace('_', '-')} {','.join(v) if isinstance(v, list) else v}"
        for k, v in rec.items()
        if k in ("heads", "mlp", "towers", "data", "epochs", "samples", "calib_samples") and v is not None
    )
    return f"""# Width-pruned student of {t["name"]}

Same Hugging Face class as the teacher with a smaller config, made by `mmdeploy prune`:
attention heads and MLP channels ranked by {r["importance"]["method"]} importance
({r["importance"]["calibration"]}) and the least important removed, then recovered by
{recov["method"]} ({recov["epochs"]} epochs, {recov["steps"]} steps, {recov["seconds"]} s on {r["device"]}).
{s["parameters"] / 1e6:.2f}M parameters ({s["ratio"]:.0%} of the teacher's {t["parameters"] / 1e6:.2f}M),
{r["sizes"]["student_bytes"] / 1e6:.2f} MB of weights (teacher {r["sizes"]["teacher_bytes"] / 1e6:.2f} MB).

```
mmdeploy prune {rec["teacher"]} -o <out> {flags}{" --random-weights" if rec["random_weights"] else ""}
```

| tower | heads | hidden | MLP | how heads were removed |
|---|---|---|---|---|
{rows}

{removed}

Teacher weights sha256: `{rec["teacher_sha256"]}`.

## Fidelity to the teacher (held-out data)

| metric | pruned, before recovery | after recovery |
|---|---|---|
{fid}

`prune.json` holds all of this (per-layer removals included); `mmdeploy export` records the
teacher so that `mmdeploy bench` can show it beside the student's variants.
"""
