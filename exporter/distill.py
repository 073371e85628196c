"""Distillation: a smaller student of the teacher's own HF class, trained to imitate it.

    mmdeploy distill clip-shapes -o students/clip-2l --vision-layers 2 --data shapes --epochs 3

Student = the teacher's class and config with fewer layers per tower (and optionally a
narrower MLP), initialised from the teacher: embeddings, projections and final norms are
copied, the kept layers are evenly spaced teacher layers (first and last included) and a
narrowed MLP keeps its most important hidden units (|fc1 row| x |fc2 column|). A tower that
keeps the teacher's exact shape stays a frozen copy unless ``train_all``.

Losses, CLIP: embedding distillation (1 - cosine + squared distance between the student's
and the teacher's normalised embeddings, image and text) + InfoNCE over the batch at the
teacher's temperature (hard multi-positive targets from captions when the data pairs images
with texts, else the teacher's own image<->text softmax as soft targets) + a relational term:
KL from the teacher's to the student's distribution of each image over up to 256 of the known
texts (the quantity zero-shot classification reads).
Captioners (ViT + GPT-2 ``VisionEncoderDecoderModel``): the teacher captions every training
image once (greedy, its generation config), then token-level KL to the teacher's logits on
those captions (teacher forcing, temperature 1) + cross-entropy to the teacher's tokens.

State for resuming is written after every epoch to ``<out>.distill-state/`` and removed once
the student folder is in place; the student folder itself appears only when complete.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..common.capabilities import Capability, names
from ..errors import CheckpointError, InputError, UnsupportedModelError, require
from .checkpoint import Checkpoint, resolve, state_sha256

torch = require("torch", "export")
F = torch.nn.functional

# arch -> tower -> (sub-config attribute, layer list module path, MLP (in-proj, out-proj, Conv1D?, width key))
LAYOUTS: dict[str, dict[str, tuple[str, str, tuple[str, str, bool, str]]]] = {
    "CLIPModel": {
        "vision": ("vision_config", "vision_model.encoder.layers", ("mlp.fc1", "mlp.fc2", False, "intermediate_size")),
        "text": ("text_config", "text_model.encoder.layers", ("mlp.fc1", "mlp.fc2", False, "intermediate_size")),
    },
    "VisionEncoderDecoderModel": {
        "vision": ("encoder", "encoder.layers", ("mlp.fc1", "mlp.fc2", False, "intermediate_size")),
        "text": ("decoder", "decoder.transformer.h", ("mlp.c_fc", "mlp.c_proj", True, "n_inner")),
    },
}
# transformers 4's ViT names (same tensors)
LEGACY_VIT = ("encoder.encoder.layer", ("intermediate.dense", "output.dense", False, "intermediate_size"))
STATE_FILE = "state.pt"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "processor_config.json",
)


@dataclass
class DistillConfig:
    vision_layers: int | None = None  # None: as the teacher
    text_layers: int | None = None  # CLIP text tower / captioner decoder
    mlp_ratio: float | None = None  # student MLP width as a fraction of the teacher's (both towers)
    data: str = "shapes"
    texts: str | None = None  # extra text file (one per line) for the text tower
    samples: int | None = None  # images per epoch (default: 24576 of shapes, all of a folder)
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    contrastive_weight: float = 0.5
    relation_weight: float = 1.0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    train_all: bool = False
    eval_images: int = 500

    def recipe(self) -> dict[str, Any]:
        """What must match for --resume to continue a run (not threads / device)."""
        d = asdict(self)
        for k in ("threads", "device", "eval_images"):
            d.pop(k)
        return d


@dataclass
class Tower:
    name: str
    teacher_layers: int
    kept: list[int]  # teacher layer index of each student layer
    teacher_mlp: int
    student_mlp: int
    trainable: bool = True
    kept_units: dict[int, list[int]] = field(default_factory=dict)  # student layer -> MLP units kept

    def describe(self) -> str:
        s = f"{self.name}: {len(self.kept)} of {self.teacher_layers} layers (teacher layers {self.kept})"
        if self.student_mlp != self.teacher_mlp:
            s += f", MLP {self.student_mlp} of {self.teacher_mlp}"
        return s + ("" if self.trainable else ", frozen copy")


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer indices, first and last included (1 -> the last layer)."""
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _layout(model) -> dict[str, tuple]:
    arch = type(model).__name__
    if arch not in LAYOUTS:
        raise UnsupportedModelError(
            f"distillation supports {', '.join(LAYOUTS)} (CLIP, ViT-GPT2 captioners); got {arch}"
        )
    if arch == "VisionEncoderDecoderModel":
        enc, dec = model.config.encoder.model_type, model.config.decoder.model_type
        if enc != "vit" or dec != "gpt2":
            raise UnsupportedModelError(
                f"captioner distillation supports ViT encoders with GPT-2 decoders; this one is {enc} + {dec}"
            )
        if not any(k.startswith(LAYOUTS[arch]["vision"][1] + ".") for k in model.state_dict()):
            return {**LAYOUTS[arch], "vision": ("encoder", *LEGACY_VIT)}
    return LAYOUTS[arch]


def plan_student(
    teacher, vision_layers: int | None, text_layers: int | None, mlp_ratio: float | None, train_all: bool = False
) -> tuple[Any, dict[str, Tower]]:
    """Student config (deep copy of the teacher's, fewer layers / narrower MLP) and the per-tower plan."""
    layout = _layout(teacher)
    cfg = copy.deepcopy(teacher.config)
    if mlp_ratio is not None and not 0 < mlp_ratio <= 1:
        raise InputError(f"--mlp-ratio {mlp_ratio}: give a fraction in (0, 1]")
    towers: dict[str, Tower] = {}
    for name, want in (("vision", vision_layers), ("text", text_layers)):
        sub_attr, _, (_, _, _, width_key) = layout[name]
        sub = getattr(cfg, sub_attr)
        total = int(sub.num_hidden_layers)
        n = total if want is None else int(want)
        flag = "--vision-layers" if name == "vision" else "--text-layers"
        if not 1 <= n <= total:
            raise InputError(f"{flag} {n}: the teacher's {name} tower has {total} layers; give 1..{total}")
        width = getattr(sub, width_key, None) or 4 * int(getattr(sub, "hidden_size", getattr(sub, "n_embd", 0)))
        new_width = width if mlp_ratio is None else max(8, int(round(width * mlp_ratio)))
        sub.num_hidden_layers = n
        setattr(sub, width_key, new_width)
        changed = n != total or new_width != width
        towers[name] = Tower(
            name, total, evenly_spaced(total, n), int(width), int(new_width), trainable=changed or train_all
        )
    if not any(t.trainable for t in towers.values()):
        raise InputError(
            "the student would equal the teacher: give --vision-layers / --text-layers below the "
            "teacher's depth, or --mlp-ratio < 1"
        )
    return cfg, towers


def build_student(teacher, cfg, towers: dict[str, Tower]):
    """Instantiate the student and load the teacher's weights into it (strict: every tensor accounted for)."""
    layout = _layout(teacher)
    student = type(teacher)(cfg)
    sd = teacher.state_dict()
    new: dict[str, Any] = {}
    prefixes = {layout[n][1] + ".": n for n in towers}
    for key, value in sd.items():
        tower = next((n for p, n in prefixes.items() if key.startswith(p)), None)
        if tower is None:
            new[key] = value.clone()
            continue
        t, prefix = towers[tower], layout[tower][1] + "."
        idx_s, rest = key[len(prefix) :].split(".", 1)
        if int(idx_s) not in t.kept:
            continue
        j = t.kept.index(int(idx_s))
        new[f"{prefix}{j}.{rest}"] = _narrow(rest, value, t, j, layout[tower][2], sd, prefix + idx_s + ".")
    missing, unexpected = student.load_state_dict(new, strict=False)
    # tied output embeddings may be absent from one side's state dict; anything else is a bug
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise CheckpointError(
            f"student initialisation left tensors unmatched: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if hasattr(student, "tie_weights"):
        student.tie_weights()
    if getattr(teacher, "generation_config", None) is not None:  # captioners: same decoding defaults
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval()


def _narrow(rest: str, value, t: Tower, j: int, mlp, sd, layer_prefix: str):
    if t.student_mlp == t.teacher_mlp:
        return value.clone()
    fc_in, fc_out, conv1d, _ = mlp
    if j not in t.kept_units:  # importance of each hidden unit: |in-projection row| x |out-projection column|
        w_in, w_out = sd[f"{layer_prefix}{fc_in}.weight"], sd[f"{layer_prefix}{fc_out}.weight"]
        if conv1d:  # GPT-2 Conv1D stores (in, out)
            score = w_in.norm(dim=0) * w_out.norm(dim=1)
        else:
            score = w_in.norm(dim=1) * w_out.norm(dim=0)
        t.kept_units[j] = sorted(score.topk(t.student_mlp).indices.tolist())
    units = torch.tensor(t.kept_units[j])
    if rest == f"{fc_in}.weight":
        return value[:, units].clone() if conv1d else value[units].clone()
    if rest == f"{fc_in}.bias":
        return value[units].clone()
    if rest == f"{fc_out}.weight":
        return value[units].clone() if conv1d else value[:, units].clone()
    return value.clone()


# --------------------------------------------------------------------------- data


def _training_data(cfg: DistillConfig, images: bool = True):
    """(train DataSet, eval DataSet or None). shapes: train / test splits; a folder: every 10th image held out.
    ``images=False`` (a runner that reads texts only): a text file or `sentences` serves too."""
    from ..common.datasets import DataSet, open_dataset

    if not images and cfg.data != "shapes":
        return _text_training_data(cfg)
    if cfg.data == "shapes":
        train = open_dataset("shapes", split="train", limit=cfg.samples or 24576)
        held = open_dataset("shapes", split="test", limit=cfg.eval_images)
        # the text tower also sees the zero-shot prompts it will be asked about
        train.texts = list(train.texts) + [train.template.format(c) for c in train.class_names]
    else:
        full = open_dataset(cfg.data, split="train")
        if not full.images:
            raise InputError(f"--data {cfg.data}: distillation needs images (a folder, 'shapes' or 'photos')")
        idx = list(range(len(full.images)))
        held_idx = idx[9::10] if len(idx) >= 20 else []
        held_set = set(held_idx)
        keep = [i for i in idx if i not in held_set][: cfg.samples or None]

        def pick(ids):
            return DataSet(
                name=full.name,
                images=[full.images[i] for i in ids],
                texts=[full.captions[i] for i in ids if full.captions and full.captions[i]] if full.captions else [],
                labels=[full.labels[i] for i in ids] if full.labels else None,
                class_names=full.class_names,
                template=full.template,
                captions=[full.captions[i] for i in ids] if full.captions else None,
            )

        train, held = pick(keep), (pick(held_idx) if held_idx else None)
        if not train.texts:
            train.texts = list(full.texts)
    if cfg.texts:
        extra = open_dataset(cfg.texts)
        if not extra.texts:
            raise InputError(f"--texts {cfg.texts}: no texts in it")
        train.texts = list(train.texts) + list(extra.texts)
    if len(train.images) < cfg.batch_size:
        raise InputError(
            f"--data {cfg.data} has {len(train.images)} training images, fewer than --batch-size {cfg.batch_size}"
        )
    return train, held


def _text_training_data(cfg: DistillConfig):
    """Texts as the samples: `sentences` by its train / test split, a file or folder every 10th text held out."""
    from ..common.datasets import DataSet, open_dataset

    if cfg.data == "sentences":
        train, held = open_dataset("sentences", split="train"), open_dataset("sentences", split="test")
    else:
        full = open_dataset(cfg.data, split="train")
        texts = list(full.texts or [c for c in full.captions or [] if c])
        held_set = set(range(9, len(texts), 10)) if len(texts) >= 20 else set()
        train = DataSet(name=full.name, texts=[t for i, t in enumerate(texts) if i not in held_set])
        held = DataSet(name=full.name, texts=[texts[i] for i in sorted(held_set)]) if held_set else None
    train.texts = list(train.texts)[: cfg.samples or None]
    if len(train.texts) < cfg.batch_size:
        raise InputError(
            f"--data {cfg.data} has {len(train.texts)} training texts, fewer than --batch-size {cfg.batch_size}"
        )
    return train, held


def training_samples(train) -> int:
    """The samples one epoch steps over: the images, or the texts of a text-only set."""
    return len(train.images) or len(train.texts)


# --------------------------------------------------------------------------- the run


def torch_device(spec: str, threads: int | None):
    """--device auto|cpu|cuda[:N] -> a torch.device (auto: CUDA when torch sees one); --threads sizes
    torch's pool. Shared by distill and prune so both check the flag alike."""
    if spec not in ("auto", "cpu") and spec.split(":")[0] != "cuda":
        raise InputError(f"--device {spec!r}: choose auto, cpu or cuda[:N]")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {spec}: this torch build sees no CUDA GPU (use auto or cpu)")
    if threads:
        torch.set_num_threads(threads)
    return torch.device("cuda" if spec == "auto" and torch.cuda.is_available() else ("cpu" if spec == "auto" else spec))


def distill(
    teacher_source: str,
    out: Path,
    cfg: DistillConfig,
    random_weights: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress=None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Distil `teacher_source` into a student folder at `out`; returns the report (also in distill.json)."""
    from .families import family_exporter

    out = Path(out).absolute()
    if cfg.epochs < 0:
        raise InputError(f"--epochs {cfg.epochs}: give 0 or more (0 writes the initialised student)")
    if cfg.batch_size < 2:
        raise InputError(f"--batch-size {cfg.batch_size}: contrastive losses need at least 2")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "distill.json").is_file():
        raise InputError(f"{out} exists and is not a distilled student: refusing to replace it")
    state_dir = out.parent / f"{out.name}.distill-state"
    if (state_dir / STATE_FILE).is_file() and not resume:
        raise InputError(f"{state_dir} holds an interrupted run: pass --resume to continue it, or delete it")

    device = torch_device(cfg.device, cfg.threads)
    log(f"loading teacher {teacher_source}{' (random weights)' if random_weights else ''}")
    ckpt = resolve(teacher_source, random_weights=random_weights)
    teacher = ckpt.model.eval()
    fam = family_exporter(ckpt)  # pre-processing, tokenizer, generation settings
    student_cfg, towers = plan_student(teacher, cfg.vision_layers, cfg.text_layers, cfg.mlp_ratio, cfg.train_all)
    # a family without a distiller (plan_student names unsupported architectures first)
    if not fam.can(Capability.DISTILL):
        from .families import families_that

        raise UnsupportedModelError(
            f"{teacher_source}: the {fam.family} family has no distiller yet "
            f"(distill takes {names(families_that(Capability.DISTILL))})"
        )
    torch.manual_seed(cfg.seed)
    student = build_student(teacher, student_cfg, towers)
    for t in towers.values():
        log(t.describe())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in student.parameters())
    log(f"student {n_student / 1e6:.2f}M parameters, teacher {n_teacher / 1e6:.2f}M ({n_student / n_teacher:.0%})")
    teacher_sha = ckpt.source.get("weights_sha256") or state_sha256(teacher)
    recipe = {
        **cfg.recipe(),
        "teacher": teacher_source,
        "teacher_sha256": teacher_sha,
        "random_weights": random_weights,
    }

    # --epochs 0 trains nothing: one batch of training data (what speed() times) instead of the teacher's
    # outputs on every training image (B/32: 24576 images, 15 GB and ~20 min of a 2-core CPU)
    train, held = _training_data(cfg if cfg.epochs else dataclasses.replace(cfg, samples=cfg.batch_size))
    teacher.to(device)
    student.to(device)
    runner = fam.distiller(fam, teacher, student, towers, cfg, device, log)  # the family's own
    runner.prepare(train)

    history, train_s = train_student(
        runner, student, len(train.images), cfg, state_dir, recipe, device, resume, log, progress, on_epoch_end
    )

    student.eval()
    log("evaluating student vs teacher")
    fidelity = runner.evaluate(held or train)
    for k, v in fidelity.items():
        log(f"{k}: {v}")
    report = {
        "teacher": {"source": ckpt.source, "name": ckpt.name, "parameters": n_teacher},
        "student": {
            "parameters": n_student,
            "ratio": round(n_student / n_teacher, 4),
            "towers": {
                n: {
                    "layers": len(t.kept),
                    "teacher_layers": t.teacher_layers,
                    "kept_layers": t.kept,
                    "mlp": t.student_mlp,
                    "teacher_mlp": t.teacher_mlp,
                    "trained": t.trainable,
                }
                for n, t in towers.items()
            },
        },
        "recipe": recipe,
        "history": history,
        "train_seconds": round(train_s, 1),
        "device": str(device),
        "fidelity": fidelity,
        "speed": runner.speed(),
    }
    _write_student(student.to("cpu"), ckpt, out, report)
    shutil.rmtree(state_dir, ignore_errors=True)
    return report


def train_student(
    runner,
    student,
    n_images: int,
    cfg: DistillConfig,
    state_dir: Path,
    recipe: dict[str, Any],
    device,
    resume: bool,
    log: Callable[[str], None],
    progress=None,
    on_epoch_end: Callable[[int], None] | None = None,
    task_name: str = "distill",
) -> tuple[list[dict[str, Any]], float]:
    """The training loop (distill, and prune's recovery): AdamW with warm-up and cosine decay over
    the runner's losses, state written to ``state_dir`` after every epoch; returns (history, seconds)."""
    params = [p for n, p in student.named_parameters() if runner.trainable(n)]
    for n, p in student.named_parameters():
        p.requires_grad_(runner.trainable(n))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = n_images // cfg.batch_size
    total = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))),
    )

    start_epoch, history = 0, []
    if resume and (state_dir / STATE_FILE).is_file():
        state = torch.load(state_dir / STATE_FILE, map_location=device, weights_only=False)
        if state["recipe"] != recipe:
            diff = sorted(k for k in set(state["recipe"]) | set(recipe) if state["recipe"].get(k) != recipe.get(k))
            raise InputError(
                f"{state_dir} was made with a different recipe ({', '.join(diff)} differ): "
                "rerun with the same options or delete it"
            )
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, history = state["epoch"], state["history"]
        log(f"resuming after epoch {start_epoch} of {cfg.epochs} from {state_dir}")
    elif resume:
        log(f"nothing to resume in {state_dir}: starting from the teacher")

    t_train = time.time()
    task = progress.add_task(task_name, total=steps_per_epoch * (cfg.epochs - start_epoch)) if progress else None
    with _training_threads(cfg.threads, device, log):
        for epoch in range(start_epoch, cfg.epochs):
            student.train()
            order = np.random.default_rng(cfg.seed + epoch).permutation(n_images)
            sums: dict[str, float] = {}
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                losses = runner.step_losses(idx, np.random.default_rng((cfg.seed, epoch, step)))
                loss = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if progress:
                    progress.update(
                        task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.4f}"
                    )
            student.eval()
            mean = {k: round(v / max(1, steps_per_epoch), 5) for k, v in sums.items()}
            history.append({"epoch": epoch + 1, **mean})
            log(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
            state_dir.mkdir(parents=True, exist_ok=True)
            tmp = state_dir / (STATE_FILE + ".tmp")
            torch.save(
                {
                    "recipe": recipe,
                    "epoch": epoch + 1,
                    "history": history,
                    "student": student.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                tmp,
            )
            os.replace(tmp, state_dir / STATE_FILE)  # a crash mid-write keeps the previous epoch's state
            if on_epoch_end:
                on_epoch_end(epoch + 1)
    return history, time.time() - t_train


@contextlib.contextmanager
def _training_threads(threads: int | None, device, log: Callable[[str], None]):
    """With no --threads given, train on one thread while other work fills every core: PyTorch's
    pool collapses beside it (pruned clip-shapes student, batch 64, load 15-20 on 2 cores: 2.3-3.8 s
    per step on 2 threads, 0.5 s on 1). The pool is restored afterwards."""
    pool, cores = torch.get_num_threads(), os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = not threads and device.type == "cpu" and pool > 1 and load >= cores
    if busy:
        log(f"busy machine (load {load:.1f} on {cores} cores): training on 1 thread (--threads overrides)")
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(pool)


def _write_student(
    student,
    ckpt: Checkpoint,
    out: Path,
    report: dict[str, Any],
    report_file: str = "distill.json",
    card: Callable[[dict[str, Any]], str] | None = None,
    extra_files: tuple[str, ...] = (),
) -> None:
    """Stage the student folder (weights, tokenizer files, report, card) and swap it into place
    (prune writes prune.json and its own card; ``extra_files``: more of the teacher's files to copy)."""
    from ..runtimes.bundle import swap_into_place
    from .checkpoint import scratch_dir
    from .processor import raw_image_processor

    with scratch_dir(out.parent) as tmp:
        stage = Path(tmp) / out.name
        stage.mkdir()
        student.save_pretrained(stage, safe_serialization=True)
        if ckpt.files_dir:
            for name in TOKENIZER_FILES + extra_files:
                if (ckpt.files_dir / name).is_file():
                    (stage / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ckpt.files_dir / name, stage / name)
        # the teacher's image processor settings as saved (the explicit form drops what the generic
        # preprocessor does not apply: a VLM's tile size and splitting), else the explicit form
        raw = (raw_image_processor(ckpt.files_dir) if ckpt.files_dir else None) or (ckpt.registry_entry or {}).get(
            "preprocessor"
        )
        (stage / "preprocessor_config.json").write_text(json.dumps(raw or ckpt.preprocessor, indent=2) + "\n")
        (stage / report_file).write_text(json.dumps(report, indent=2) + "\n")
        (stage / "README.md").write_text((card or student_card)(report))
        swap_into_place(stage, out)  # removes the student it replaces


def student_card(r: dict[str, Any]) -> str:
    t, s, rec = r["teacher"], r["student"], r["recipe"]
    rows = "\n".join(
        f"| {n} | {v['layers']} of {v['teacher_layers']} (teacher layers {v['kept_layers']}) | {v['mlp']} of {v['teacher_mlp']} | "
        f"{'yes' if v['trained'] else 'no (frozen copy)'} |"
        for n, v in s["towers"].items()
    )
    fid = "\n".join(f"| {k} | {v} |" for k, v in r["fidelity"].items())
    speed = "\n".join(f"| {k} | {v} |" for k, v in r["speed"].items())
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in rec.items()
        if k not in ("teacher", "teacher_sha256", "random_weights") and v is not None and v is not False
    )
    return f"""# Distilled student of {t["name"]}

Same Hugging Face class as the teacher, fewer layers, initialised from the teacher's weights and
trained to imitate it with `mmdeploy distill`. {s["parameters"] / 1e6:.2f}M parameters
({s["ratio"]:.0%} of the teacher's {t["parameters"] / 1e6:.2f}M).

```
mmdeploy distill {rec["teacher"]} -o <out> {flags}{" --random-weights" if rec["random_weights"] else ""}
```

| tower | layers | MLP width | trained |
|---|---|---|---|
{rows}

Teacher weights sha256: `{rec["teacher_sha256"]}`. Training: {r["train_seconds"]} s on {r["device"]}.

## Fidelity to the teacher (held-out data)

| metric | value |
|---|---|
{fid}

## PyTorch speed (batch 1, this machine, one measurement)

| metric | value |
|---|---|
{speed}

`distill.json` holds all of this; `mmdeploy export` records the teacher so that `mmdeploy bench`
can show the teacher's PyTorch speed and accuracy beside the student's variants.
"""


# --------------------------------------------------------------------------- per family


def _speed(name: str, teacher_fn, student_fn, runs: int = 20) -> dict[str, float]:
    """Batch-1 PyTorch latency of teacher and student, median of `runs`."""
    t, s = _timed(teacher_fn, runs), _timed(student_fn, runs)
    return {f"teacher_{name}_ms": round(t, 2), f"student_{name}_ms": round(s, 2), f"{name}_speedup": round(t / s, 2)}


def _timed(fn, runs: int = 20) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn()
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1000)


class _Distiller:
    """What every distiller holds: the family's exporter, teacher and student, the towers it trains,
    the settings, the device and the log."""

    reads_images: ClassVar[bool] = True  # False: its training data may be texts alone

    def __init__(self, fam, teacher, student, towers, cfg: DistillConfig, device, log):
        self.fam, self.teacher, self.student, self.towers, self.cfg, self.device, self.log = (
            fam,
            teacher,
            student,
            towers,
            cfg,
            device,
            log,
        )

    def _tok(self, texts: list[str]) -> dict[str, Any]:
        """The family's tokenizer feeds, as tensors on the device."""
        return {k: torch.from_numpy(v).to(self.device) for k, v in self.fam.tokenizer(texts).items()}


class ClipDistiller(_Distiller):
    def __init__(self, fam, teacher, student, towers, cfg: DistillConfig, device, log):
        super().__init__(fam, teacher, student, towers, cfg, device, log)
        self.scale = float(teacher.logit_scale.detach().exp().clamp(max=100))

    def trainable(self, name: str) -> bool:
        if name.startswith(("vision_model.", "visual_projection.")):
            return self.towers["vision"].trainable
        if name.startswith(("text_model.", "text_projection.")):
            return self.towers["text"].trainable
        return False  # logit_scale: the teacher's temperature

    @staticmethod
    def _feats(out):
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    def _embed(self, model, pixels=None, texts=None, batch: int = 256) -> Any:
        outs = []
        if pixels is not None:
            for i in range(0, len(pixels), batch):
                outs.append(self._feats(model.get_image_features(pixel_values=pixels[i : i + batch].to(self.device))))
        else:
            for i in range(0, len(texts), batch):
                outs.append(self._feats(model.get_text_features(**self._tok(texts[i : i + batch]))))
        return torch.cat(outs)

    def prepare(self, train) -> None:
        """Pre-process every training image and embed images and texts with the teacher, once."""
        self.train = train
        self.log(f"teacher embeddings for {len(train.images)} images and {len(set(train.texts))} texts")
        chunks = [
            torch.from_numpy(self.fam.preprocess(train.images[i : i + 256])) for i in range(0, len(train.images), 256)
        ]
        self.pixels = torch.cat(chunks)
        self.captions = train.captions
        self.pool = sorted(set(train.texts))
        self.pool_index = {t: i for i, t in enumerate(self.pool)}
        with torch.inference_mode():
            self.t_img = self._embed(self.teacher, pixels=self.pixels).clone()
            self.t_txt = self._embed(self.teacher, texts=self.pool).clone()

    def step_losses(self, idx, rng) -> dict[str, Any]:
        cfg, losses = self.cfg, {}
        px = self.pixels[idx].to(self.device)
        t_img = self.t_img[idx]
        if self.captions:
            texts = [self.captions[i] for i in idx]
        else:
            texts = [self.pool[i] for i in rng.choice(len(self.pool), len(idx), replace=len(self.pool) < len(idx))]
        tix = torch.tensor([self.pool_index[t] for t in texts], device=self.device)
        t_txt = self.t_txt[tix]
        if self.towers["vision"].trainable:
            s_img = self._feats(self.student.get_image_features(pixel_values=px))
            losses["image"] = _embedding_loss(s_img, t_img)
        else:
            s_img = t_img
        if self.towers["text"].trainable:
            s_txt = self._feats(self.student.get_text_features(**self._tok(texts)))
            losses["text"] = _embedding_loss(s_txt, t_txt)
            if len(self.pool) > len(idx):  # unpaired texts too (e.g. the zero-shot prompts)
                extra = rng.choice(len(self.pool), max(2, len(idx) // 2), replace=False)
                s_x = self._feats(self.student.get_text_features(**self._tok([self.pool[i] for i in extra])))
                losses["text"] = losses["text"] + _embedding_loss(
                    s_x, self.t_txt[torch.from_numpy(extra).to(self.device)]
                )
        else:
            s_txt = t_txt
        logits = self.scale * s_img @ s_txt.T
        if self.captions:  # hard targets: every in-batch image with the same caption is a positive
            same = (tix[:, None] == tix[None, :]).float()
            target_i, target_t = same / same.sum(-1, keepdim=True), same.T / same.T.sum(-1, keepdim=True)
        else:  # soft targets: the teacher's own image <-> text distribution
            t_logits = self.scale * t_img @ t_txt.T
            target_i, target_t = t_logits.softmax(-1), t_logits.T.softmax(-1)
        nce = -(target_i * logits.log_softmax(-1)).sum(-1).mean() - (target_t * logits.T.log_softmax(-1)).sum(-1).mean()
        losses["contrastive"] = cfg.contrastive_weight * 0.5 * nce
        # relational: each image's distribution over (a sample of) all known texts, as the teacher's;
        # this is what zero-shot classification reads, so it carries the ranking, not just the direction
        pool_ix = rng.choice(len(self.pool), min(len(self.pool), 256), replace=False)
        t_pool = self.t_txt[torch.from_numpy(pool_ix).to(self.device)]
        s_pool = (
            self._feats(self.student.get_text_features(**self._tok([self.pool[i] for i in pool_ix])))
            if self.towers["text"].trainable
            else t_pool
        )
        t_rel = (self.scale * t_img @ t_pool.T).softmax(-1)
        s_rel = (self.scale * s_img @ s_pool.T).log_softmax(-1)
        losses["relation"] = cfg.relation_weight * (t_rel * (t_rel.clamp_min(1e-12).log() - s_rel)).sum(-1).mean()
        return losses

    def evaluate(self, data) -> dict[str, Any]:
        px = torch.from_numpy(self.fam.preprocess(data.images))
        texts = sorted(set(data.texts))[:512] or self.pool[:512]
        out: dict[str, Any] = {"eval_images": len(data.images), "eval_data": data.name}
        with torch.inference_mode():
            t_img, s_img = self._embed(self.teacher, pixels=px), self._embed(self.student, pixels=px)
            t_txt, s_txt = self._embed(self.teacher, texts=texts), self._embed(self.student, texts=texts)
            out["image_cosine_to_teacher"] = round(float((t_img * s_img).sum(-1).mean()), 5)
            out["text_cosine_to_teacher"] = round(float((t_txt * s_txt).sum(-1).mean()), 5)
            if data.labels and data.class_names:
                prompts = [data.template.format(c) for c in data.class_names]
                t_p, s_p = self._embed(self.teacher, texts=prompts), self._embed(self.student, texts=prompts)
                truth = torch.tensor([data.class_names.index(l) for l in data.labels], device=self.device)
                tea = float(((t_img @ t_p.T).argmax(-1) == truth).float().mean())
                stu = float(((s_img @ s_p.T).argmax(-1) == truth).float().mean())
                out.update(
                    teacher_top1=round(tea, 4),
                    student_top1=round(stu, 4),
                    top1_kept=round(stu / tea, 4) if tea else None,
                )
        return out

    def speed(self) -> dict[str, Any]:
        px = self.pixels[:1].to(self.device)
        return _speed(
            "vision", *(lambda m=m: m.get_image_features(pixel_values=px) for m in (self.teacher, self.student))
        )


def _embedding_loss(s, t):
    """1 - cosine + squared distance, both on normalised embeddings."""
    return (1 - (s * t).sum(-1)).mean() + ((s - t) ** 2).sum(-1).mean()


class CaptionDistiller(_Distiller):
    """ViT + GPT-2: KL to the teacher's next-token distribution on the teacher's own captions."""

    def __init__(self, fam, teacher, student, towers, cfg: DistillConfig, device, log):
        super().__init__(fam, teacher, student, towers, cfg, device, log)
        self.eos = set(fam.generation["eos_token_id"])
        self.pad = fam.generation["pad_token_id"]

    def trainable(self, name: str) -> bool:
        if name.startswith("encoder."):
            return self.towers["vision"].trainable
        if name.startswith("decoder."):
            # the decoder holds the cross-attention into the encoder: train it whenever anything changed
            return True
        return False

    def _generate(self, model, pixels, batch: int = 128) -> Any:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(pixels), batch):
                ids = model.generate(pixel_values=pixels[i : i + batch].to(self.device), do_sample=False)
                outs.append(ids.cpu())
        width = max(o.shape[1] for o in outs)
        return torch.cat([F.pad(o, (0, width - o.shape[1]), value=self.pad) for o in outs])

    def _mask(self, seq):
        """1 up to and including the first eos after the start token (later pads are ignored)."""
        is_eos = torch.zeros_like(seq, dtype=torch.bool)
        for e in self.eos:
            is_eos |= seq == e
        is_eos[:, 0] = False
        after = (is_eos.cumsum(1) - is_eos.long()) > 0
        return (~after).long()

    def prepare(self, train) -> None:
        self.log(f"teacher captions for {len(train.images)} training images")
        self.pixels = torch.cat(
            [torch.from_numpy(self.fam.preprocess(train.images[i : i + 256])) for i in range(0, len(train.images), 256)]
        )
        self.seq = self._generate(self.teacher, self.pixels)
        self.mask = self._mask(self.seq)

    def step_losses(self, idx, rng) -> dict[str, Any]:
        px = self.pixels[idx].to(self.device)
        seq, mask = self.seq[idx].to(self.device), self.mask[idx].to(self.device)
        inp, tgt, m = seq[:, :-1], seq[:, 1:], mask[:, 1:].float()
        with torch.no_grad():
            t_logits = self.teacher(pixel_values=px, decoder_input_ids=inp, decoder_attention_mask=mask[:, :-1]).logits
        s_logits = self.student(pixel_values=px, decoder_input_ids=inp, decoder_attention_mask=mask[:, :-1]).logits
        s_logp = s_logits.log_softmax(-1)
        kl = (t_logits.softmax(-1) * (t_logits.log_softmax(-1) - s_logp)).sum(-1)
        ce = -s_logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        denom = m.sum().clamp(min=1)
        return {"kl": (kl * m).sum() / denom, "ce": 0.5 * (ce * m).sum() / denom}

    def _text(self, ids) -> list[str]:
        tok = self.fam.tokenizer
        out = []
        for row in ids.tolist():
            row = row[1:]
            cut = next((i for i, t in enumerate(row) if t in self.eos), len(row))
            out.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return out

    def evaluate(self, data) -> dict[str, Any]:
        px = torch.from_numpy(self.fam.preprocess(data.images))
        t_txt, s_txt = self._text(self._generate(self.teacher, px)), self._text(self._generate(self.student, px))
        out: dict[str, Any] = {
            "eval_images": len(data.images),
            "eval_data": data.name,
            "captions_equal_to_teacher": round(float(np.mean([a == b for a, b in zip(t_txt, s_txt)])), 4),
        }
        if data.captions:
            refs = [c.strip() for c in data.captions]
            tea = float(np.mean([a == r for a, r in zip(t_txt, refs)]))
            stu = float(np.mean([a == r for a, r in zip(s_txt, refs)]))
            out.update(
                teacher_exact_match=round(tea, 4),
                student_exact_match=round(stu, 4),
                exact_match_kept=round(stu / tea, 4) if tea else None,
            )
        return out

    def speed(self) -> dict[str, Any]:
        px = self.pixels[:1].to(self.device)
        return _speed(
            "generate",
            *(lambda m=m: m.generate(pixel_values=px, do_sample=False) for m in (self.teacher, self.student)),
            runs=10,
        )


class SentenceDistiller(_Distiller):
    """Sentence embeddings (a BERT encoder + the family's pooling): the student's normalised embedding
    of each training text matched to the teacher's, and its in-batch similarity ranking to the
    teacher's (what retrieval reads). Prune's recovery for text embeddings (no depth distillation)."""

    reads_images = False

    def __init__(self, fam, teacher, student, towers, cfg: DistillConfig, device, log):
        from .families.text_embedding import SentenceEncoder

        super().__init__(fam, teacher, student, towers, cfg, device, log)
        self.t_enc = SentenceEncoder(teacher, fam.pooling, True).eval()
        self.s_enc = SentenceEncoder(student, fam.pooling, True)

    def trainable(self, name: str) -> bool:
        return self.towers["text"].trainable  # the whole model is the text tower

    def _embed(self, enc, texts: list[str], batch: int = 256) -> Any:
        return torch.cat([enc(**self._tok(texts[i : i + batch])) for i in range(0, len(texts), batch)])

    def prepare(self, train) -> None:
        self.pool = sorted(set(train.captions or []) | set(train.texts))
        if not train.images:  # a text-only set: step row i is text i
            self.captions = list(train.texts)
        else:  # one text per step row: the image's caption where the data has them, else a sample of the pool
            self.captions = train.captions
        self.pool_index = {t: i for i, t in enumerate(self.pool)}
        self.log(f"teacher embeddings for {len(self.pool)} texts")
        with torch.inference_mode():
            self.t_emb = self._embed(self.t_enc, self.pool).clone()

    def step_losses(self, idx, rng) -> dict[str, Any]:
        if self.captions:
            rows = [self.pool_index[self.captions[i]] for i in idx]
        else:
            rows = list(rng.choice(len(self.pool), len(idx), replace=len(self.pool) < len(idx)))
        t = self.t_emb[torch.tensor(rows, device=self.device)]
        s = self.s_enc(**self._tok([self.pool[i] for i in rows]))
        t_rel, s_rel = (20 * t @ t.T).softmax(-1), (20 * s @ s.T).log_softmax(-1)  # 20: a retrieval temperature
        return {
            "embedding": _embedding_loss(s, t),
            "relation": self.cfg.relation_weight * (t_rel * (t_rel.clamp_min(1e-12).log() - s_rel)).sum(-1).mean(),
        }

    def evaluate(self, data) -> dict[str, Any]:
        texts = list(data.texts)[:500]
        with torch.inference_mode():
            cos = (self._embed(self.t_enc, texts) * self._embed(self.s_enc.eval(), texts)).sum(-1)
        return {
            "eval_texts": len(texts),
            "eval_data": data.name,
            "text_cosine_to_teacher": round(float(cos.mean()), 5),
        }

    def speed(self) -> dict[str, Any]:
        feeds = self._tok(self.pool[:1])
        return _speed("text", *(lambda e=e: e(**feeds) for e in (self.t_enc, self.s_enc)))


class VqaDistiller(_Distiller):
    """BLIP VQA: the student's answer-token distribution matched to the teacher's (KL), teacher-forced on
    the reference answers of --data's questions, plus their cross-entropy. Prune's recovery for VQA."""

    def __init__(self, fam, teacher, student, towers, cfg: DistillConfig, device, log):
        super().__init__(fam, teacher, student, towers, cfg, device, log)
        tc = teacher.config.text_config
        self.start, self.eos, self.pad = tc.bos_token_id, tc.sep_token_id, tc.pad_token_id

    def trainable(self, name: str) -> bool:
        if name.startswith("vision_model."):
            return self.towers["vision"].trainable
        # the question encoder cross-attends to the image and the decoder to the question: train both
        # whenever anything changed
        return name.startswith(("text_encoder.", "text_decoder."))

    def _rows(self, rows: list[list[int]]) -> tuple[Any, Any]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return ids.to(self.device), mask.to(self.device)

    def _logits(self, model, px, q, qm, a, am):
        img = model.vision_model(pixel_values=px).last_hidden_state
        ones = torch.ones(img.shape[:2], dtype=torch.long, device=img.device)
        qh = model.text_encoder(
            input_ids=q, attention_mask=qm, encoder_hidden_states=img, encoder_attention_mask=ones
        ).last_hidden_state
        return model.text_decoder(
            input_ids=a, attention_mask=am, encoder_hidden_states=qh, encoder_attention_mask=qm
        ).logits

    def prepare(self, train) -> None:
        if not train.qa:
            raise InputError(f"--data {train.name}: VQA recovery needs questions with answers ('shapes')")
        tok = self.fam.tokenizer
        self.qa = [
            (image, tok.encode(q).ids, [self.start, *tok.encode(a, add_special_tokens=False).ids, self.eos])
            for image, q, a in train.qa
        ]
        self.log(f"{len(self.qa)} questions on {len(train.images)} training images")

    def step_losses(self, idx, rng) -> dict[str, Any]:
        rows = [self.qa[i] for i in rng.choice(len(self.qa), len(idx), replace=len(self.qa) < len(idx))]
        px = torch.from_numpy(self.fam.preprocess([r[0] for r in rows])).to(self.device)
        (q, qm), (a, am) = self._rows([r[1] for r in rows]), self._rows([r[2] for r in rows])
        with torch.no_grad():
            t_logits = self._logits(self.teacher, px, q, qm, a, am)[:, :-1]
        s_logp = self._logits(self.student, px, q, qm, a, am)[:, :-1].log_softmax(-1)
        m = am[:, 1:].float()
        kl = (t_logits.softmax(-1) * (t_logits.log_softmax(-1) - s_logp)).sum(-1)
        ce = -s_logp.gather(-1, a[:, 1:].unsqueeze(-1)).squeeze(-1)
        denom = m.sum().clamp(min=1)
        return {"kl": (kl * m).sum() / denom, "ce": 0.5 * (ce * m).sum() / denom}

    def evaluate(self, data) -> dict[str, Any]:
        qa = list(data.qa or [])[:600]
        t, s = (vqa_answers(self.fam, m, qa, self.device) for m in (self.teacher, self.student))
        tea = float(np.mean([x == a for x, (_, _, a) in zip(t, qa)]))
        stu = float(np.mean([x == a for x, (_, _, a) in zip(s, qa)]))
        return {
            "eval_questions": len(qa),
            "eval_data": data.name,
            "answers_equal_to_teacher": round(float(np.mean([x == y for x, y in zip(t, s)])), 4),
            "teacher_exact_match": round(tea, 4),
            "student_exact_match": round(stu, 4),
            "exact_match_kept": round(stu / tea, 4) if tea else None,
        }

    def speed(self) -> dict[str, Any]:
        image, q, _ = self.qa[0]
        px = torch.from_numpy(self.fam.preprocess([image])).to(self.device)
        ids = torch.tensor([q], device=self.device)
        return _speed(
            "answer",
            *(
                lambda m=m: m.generate(pixel_values=px, input_ids=ids, do_sample=False)
                for m in (self.teacher, self.student)
            ),
            runs=10,
        )


def vqa_answers(fam, model, qa, device) -> list[str]:
    """Greedy answers to (image, question, _) rows, questions of one token length batched unpadded (as
    the runtime answers them)."""
    tok, groups, out = fam.tokenizer, {}, [""] * len(qa)
    ids = [tok.encode(q).ids for _, q, _ in qa]
    for i, q in enumerate(ids):
        groups.setdefault(len(q), []).append(i)
    with torch.inference_mode():
        for rows in groups.values():
            for k in range(0, len(rows), 128):
                chunk = rows[k : k + 128]
                px = torch.from_numpy(fam.preprocess([qa[i][0] for i in chunk])).to(device)
                q = torch.tensor([ids[i] for i in chunk], device=device)
                seqs = model.generate(
                    pixel_values=px, input_ids=q, do_sample=False, max_new_tokens=fam.generation["default_new_tokens"]
                )
                for i, seq in zip(chunk, seqs.tolist()):
                    out[i] = tok.decode(seq, skip_special_tokens=True).strip()
    return out


class VisionFeatureDistiller(_Distiller):
    """A VLM's vision tower (with its connector): the student's image features, what the language model
    reads, matched to the teacher's token by token (cosine + squared distance relative to the teacher's
    mean energy). Prune's recovery for a chat model's vision tower; the language model stays frozen."""

    def __init__(self, fam, teacher, student, towers, cfg: DistillConfig, device, log):
        from .families.vlm import VlmVision

        super().__init__(fam, teacher, student, towers, cfg, device, log)
        self.t_vis, self.s_vis = VlmVision(teacher).eval(), VlmVision(student)

    def trainable(self, name: str) -> bool:
        return self.towers["vision"].trainable and name.startswith(("model.vision_model.", "model.connector."))

    def _pixels(self, images) -> Any:
        return torch.from_numpy(self.fam.pixel_values(list(images))).to(self.device)

    def prepare(self, train) -> None:
        self.images = train.images
        self.log(f"{len(train.images)} training images (teacher features computed per step)")

    def step_losses(self, idx, rng) -> dict[str, Any]:
        px = self._pixels(self.images[i] for i in idx)
        with torch.no_grad():
            t = self.t_vis(px)
        s = self.s_vis(px)
        return {
            "cosine": (1 - F.cosine_similarity(s, t, dim=-1)).mean(),
            "mse": ((s - t) ** 2).mean() / t.pow(2).mean().clamp_min(1e-12),
        }

    def evaluate(self, data) -> dict[str, Any]:
        images = list(data.images)[:500]
        cos = []
        with torch.inference_mode():
            for i in range(0, len(images), 64):
                px = self._pixels(images[i : i + 64])
                cos.append(F.cosine_similarity(self.s_vis.eval()(px), self.t_vis(px), dim=-1).flatten())
        return {
            "eval_images": len(images),
            "eval_data": data.name,
            "image_feature_cosine_to_teacher": round(float(torch.cat(cos).mean()), 5),
        }

    def speed(self) -> dict[str, Any]:
        px = self._pixels(self.images[:1])
        return _speed("vision", *(lambda v=v: v(px) for v in (self.t_vis, self.s_vis)))
