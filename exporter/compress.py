"""`mmdeploy compress`: the fastest variant that still scores within --max-drop points of the teacher, here.

    mmdeploy compress clip-shapes -o out/clip-best --data shapes --max-drop 1.0 [--budget-ms 0.3]

The space is declared, small and crossed: depth (the share of the image tower's layers kept) x
width (the share of MLP channels kept) x precision x backend, plus the heads axis (the share of
the image tower's attention heads kept, with CLIP's residual width) at full depth and the
narrowest width. Each (depth, width, heads) point is one student, made once by `_make_student`:
width and heads by the pruner (exporter/prune.py: heads, residual and MLP channels ranked by
activation importance, recovered by distillation from the teacher), depth (with or without
width) by the distiller (kept layers evenly spaced, MLP units ranked by weight norm); depth 1,
width 1 and heads 1 is the teacher itself, untrained. Each student is exported with every
(backend, precision) of the space by the normal `export` (INT8 calibrated on --data), so every
candidate is a bundle variant that passed or failed its usual cosine gate.

Every candidate is then scored (zero-shot top-1 on held-out --data, through the device runtime
as a user would run it) and timed at batch 1 in one alternating tournament per component, all
candidates turn by turn (choose.py's method: drift on a shared machine hits all alike); its
latency is the sum over components, as `bench` records it. The Pareto front is the candidates no
other is at least as accurate and as fast as (better in one); the pick is the fastest candidate
that passed its gate, lost at most --max-drop points of top-1 against the teacher's fp32 and,
with --budget-ms, ran within it.

Storage: a bundle holds one model's variants, so the output is the chosen student's bundle,
whose default variant (load(), on this machine) is the pick; its manifest's `compress` record
lists every candidate with its figures, how it was made and the bundle that holds it. The other
students and their bundles stay in the cache beside the output, ``<out>.compress-cache/``
(students/<key>, bundles/<key>): a re-run with the same training settings reuses them (an
interrupted training resumes from its last epoch), so only the timing is done again; delete the
cache to reclaim the space.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.capabilities import Capability, names
from ..errors import BackendError, CapabilityError, InputError

DEFAULT_DEPTHS = (1.0, 0.5)
# 0.25 too: the heads student at MLP 0.25 matched the teacher (98.2-98.6%) and ran 2.1x its INT8 vision
DEFAULT_WIDTHS = (1.0, 0.5, 0.25)
# a cut residual recovers only with prune's long recovery (4096 steps, ~6 min of one core on clip-shapes:
# --heads 0.5 --mlp 0.25 reached the teacher's 98.6%, 256 steps ~80%): one heads student, not a cross
DEFAULT_HEADS = (1.0, 0.5)
DEFAULT_PRECISIONS = ("fp32", "int8")
DEFAULT_BACKENDS = ("onnxruntime", "openvino")
CACHE_STATE = "state.json"
# per student, measured on clip-shapes (1.05M parameters) on 2 busy EPYC cores: export of 4 variants
# with INT8 calibration ~40 s, scoring 500 images per variant ~3 s; scaled by the teacher's size
EXPORT_S_PER_VARIANT = 10.0
SCORE_S_PER_VARIANT = 3.0
REFERENCE_PARAMS = 1.05e6


@dataclass(frozen=True)
class Student:
    """One point of the model axes: the share of the image tower's layers kept, the MLP width ratio
    and the share of the image tower's attention heads kept."""

    depth: float = 1.0
    width: float = 1.0
    heads: float = 1.0

    @property
    def key(self) -> str:
        return f"depth{self.depth:g}-width{self.width:g}" + (f"-heads{self.heads:g}" if self.heads < 1 else "")

    @property
    def is_teacher(self) -> bool:
        return self.depth == 1.0 and self.width == 1.0 and self.heads == 1.0


@dataclass
class CompressConfig:
    data: str = "shapes"
    max_drop: float = 1.0  # top-1 points (of 100) below the teacher's fp32
    budget_ms: float | None = None  # batch-1 latency, summed over components
    budget_min: float | None = None  # wall-clock minutes for the whole search
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    widths: tuple[float, ...] = DEFAULT_WIDTHS
    heads: tuple[float, ...] = DEFAULT_HEADS
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    # recovery training per depth / MLP student (256 steps: the 30-min search)
    epochs: int = 2
    # heads students: None = prune's own recovery for a cut residual (16 epochs of 16384: 4096 steps),
    # else that many epochs over `samples`
    heads_epochs: int | None = None
    samples: int = 8192  # training images per epoch
    batch_size: int = 64
    # None: prune's own for width (1e-3 for an MLP cut: 3e-3 measured 92.8% after 256 steps, 93.4% before
    # recovery), 3e-3 for the distiller's depth cuts (half depth, 256 steps: 83.8%)
    lr: float | None = None
    seed: int = 0
    eval_images: int = 500  # held-out images the top-1 is measured on
    timing_seconds: float = 2.0  # per candidate and component, in the tournament
    threads: int | None = None

    def students(self) -> list[Student]:
        grid = [Student(d, w) for d in self.depths for w in self.widths]
        return grid + [Student(1.0, min(self.widths), h) for h in self.heads if h < 1]

    def steps(self, student: Student) -> int:
        """Training steps of one student: prune's recovery where the residual is cut, else --epochs."""
        if student.heads < 1:  # what _prune_config trains it with; None: prune's passes for a cut residual
            from .prune import EPOCHS_HIDDEN_CUT

            pc = _prune_config(student, self)
            return (pc.epochs if pc.epochs is not None else EPOCHS_HIDDEN_CUT) * (pc.samples // pc.batch_size)
        return self.epochs * (self.samples // self.batch_size)

    def train_share(self, student: Student) -> float:
        """The share of a full-size image-tower step one step of this student costs (a rough scale)."""
        return min(1.0, 0.15 + student.depth * student.width**0.5 * student.heads)

    @staticmethod
    def trains_text(student: Student) -> bool:
        """An MLP cut without heads narrows both towers, so the text tower trains too; depth and heads
        cuts touch the image tower alone (the text embeddings are the teacher's, computed once)."""
        return student.width < 1 and student.heads == 1

    def train_seconds(self, student: Student, step: tuple[float, float]) -> float:
        """Training time from the timed full-size (image, text) steps: the image tower's share, plus the
        text tower's where it trains."""
        image_s, text_s = step
        text = text_s * min(1.0, 0.15 + student.width**0.5) if self.trains_text(student) else 0.0
        return self.steps(student) * (image_s * self.train_share(student) + text)


@dataclass
class Estimate:
    minutes: float
    trained: list[str] = field(default_factory=list)  # students that need training
    dropped: list[str] = field(default_factory=list)  # students --budget-min trimmed

    def line(self) -> str:
        s = f"estimated wall-clock: about {self.minutes:.0f} min"
        if self.trained:
            s += f" ({len(self.trained)} student(s) to train: {', '.join(self.trained)})"
        return s


# --------------------------------------------------------------------------- policy: front and pick


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as accurate and at least as fast as b, and better in one."""
    return a["top1"] >= b["top1"] and a["ms"] <= b["ms"] and (a["top1"] > b["top1"] or a["ms"] < b["ms"])


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the rows no other row dominates, fastest first."""
    front = [i for i, r in enumerate(rows) if not any(dominates(o, r) for j, o in enumerate(rows) if j != i)]
    return sorted(front, key=lambda i: (rows[i]["ms"], -rows[i]["top1"]))


def drop_points(top1: float, baseline: float) -> float:
    """Top-1 lost against the baseline, in points of 100 (rounded: 500 images move it by 0.2)."""
    return round((baseline - top1) * 100, 4)


def eligible(row: dict[str, Any], baseline: float, max_drop: float, budget_ms: float | None) -> str | None:
    """None if the row may be picked, else why not."""
    if not row["gate_passed"]:
        return "below its cosine gate"
    drop = drop_points(row["top1"], baseline)
    if drop > max_drop:
        return f"drops {drop:.2f} points > --max-drop {max_drop:g}"
    if budget_ms is not None and row["ms"] > budget_ms:
        return f"{row['ms']:.3f} ms > --budget-ms {budget_ms:g}"
    return None


def pick(rows: list[dict[str, Any]], baseline: float, max_drop: float, budget_ms: float | None = None) -> int | None:
    """Index of the fastest row that passed its gate, lost at most max_drop points and fits
    budget_ms (ties: the more accurate); None if none did."""
    ok = [i for i, r in enumerate(rows) if eligible(r, baseline, max_drop, budget_ms) is None]
    return min(ok, key=lambda i: (rows[i]["ms"], -rows[i]["top1"]), default=None)


# --------------------------------------------------------------------------- checks before any work


def check_config(cfg: CompressConfig) -> None:
    """Every flag checked before anything is loaded or written."""
    from ..runtimes.backends import backend_names, get_backend
    from ..runtimes.session import PRECISIONS

    if not (math.isfinite(cfg.max_drop) and 0 <= cfg.max_drop <= 100):
        raise InputError(f"--max-drop {cfg.max_drop:g}: give top-1 points in [0, 100] (e.g. 1.0)")
    if cfg.budget_ms is not None and not cfg.budget_ms > 0:
        raise InputError(f"--budget-ms {cfg.budget_ms:g}: give a latency above 0")
    if cfg.budget_min is not None and not cfg.budget_min > 0:
        raise InputError(f"--budget-min {cfg.budget_min:g}: give minutes above 0")
    for flag, values in (("--depth", cfg.depths), ("--width", cfg.widths), ("--heads", cfg.heads)):
        if not values:
            raise InputError(f"{flag} is empty: give fractions in (0, 1], e.g. 1,0.5")
        for v in values:
            if not 0 < v <= 1:
                raise InputError(f"{flag} {v:g}: give fractions in (0, 1] (1 keeps the teacher's)")
    for p in cfg.precisions:
        if p not in PRECISIONS:
            raise InputError(f"--precision {p!r}: choose from {', '.join(PRECISIONS)}")
    for b in cfg.backends:
        if b not in backend_names():
            raise InputError(f"--backend {b!r}: choose from {', '.join(backend_names())}")
        if b == "tensorrt":
            raise InputError("--backend tensorrt: compress times candidates on this CPU (onnxruntime, openvino)")
        if (why := get_backend(b).available()) is not None:
            raise BackendError(why)
    if not cfg.precisions or not cfg.backends:
        raise InputError("--precision and --backend need at least one value each")
    if cfg.epochs < 1 or cfg.samples < cfg.batch_size or cfg.batch_size < 2:
        raise InputError(
            f"--epochs {cfg.epochs} / --samples {cfg.samples} / --batch-size {cfg.batch_size}: students need "
            "at least one epoch of at least one batch (of 2 or more)"
        )
    if cfg.heads_epochs is not None and cfg.heads_epochs < 1:
        raise InputError(f"--heads-epochs {cfg.heads_epochs}: heads students need at least one epoch")
    if cfg.eval_images < 10:
        raise InputError(f"--eval-images {cfg.eval_images}: top-1 on fewer than 10 images says nothing")


def compressible_families() -> list[str]:
    """Families whose exporter can distill or prune (declared) and whose pipeline classifies zero-shot
    (the accuracy compress reads)."""
    from ..runtimes.pipelines import families_that as pipelines_that
    from .families import families_that

    makers = set(families_that(Capability.DISTILL)) | set(families_that(Capability.PRUNE))
    return sorted(makers & set(pipelines_that(Capability.CLASSIFY)))


def check_source(teacher: str) -> str:
    """The teacher's family, refused with one line unless compress can search it."""
    from .checkpoint import resolve, source_family

    family = source_family(teacher)
    if family is None:
        resolve(teacher)  # raises the one-line reason (not found, not a checkpoint)
        raise InputError(f"{teacher}: cannot tell its family")
    if family not in compressible_families():
        raise CapabilityError(
            f"{teacher}: the {family} family cannot be compressed (compress needs a family that can distill "
            f"or prune and classify zero-shot: {names(compressible_families())})"
        )
    return family


def evaluation_data(spec: str, limit: int):
    """Held-out labelled images: the shapes test split, or every 10th image of a folder (the ones
    distillation holds out)."""
    from ..common.datasets import DataSet, check_spec, open_dataset

    check_spec(spec, "--data")
    if spec == "shapes":
        data = open_dataset("shapes", split="test", limit=limit)
    else:
        full = open_dataset(spec, split="test")
        held = list(range(9, len(full.images), 10)) if len(full.images) >= 20 else list(range(len(full.images)))
        data = DataSet(
            name=f"{full.name} (every 10th image)",
            images=[full.images[i] for i in held][:limit],
            labels=[full.labels[i] for i in held][:limit] if full.labels else None,
            class_names=full.class_names,
            template=full.template,
        )
    if not data.images or not data.labels or not data.class_names:
        raise InputError(
            f"--data {spec}: --max-drop is measured as zero-shot top-1, which needs labelled images "
            "('shapes', or a folder with labels.tsv)"
        )
    return data


# --------------------------------------------------------------------------- the model axes


def _training_kwargs(cfg: CompressConfig) -> dict[str, Any]:
    """The training settings distill and prune share: one place, so the two axes train alike."""
    return dict(
        data=cfg.data,
        samples=cfg.samples,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        threads=cfg.threads,
        device="cpu",
        eval_images=cfg.eval_images,
    )


def _distill_config(student: Student, teacher_cfg, cfg: CompressConfig):
    from .distill import DistillConfig
    from .prune import LR_HIDDEN_CUT

    layers = teacher_cfg.vision_config.num_hidden_layers
    return DistillConfig(
        vision_layers=max(1, round(layers * student.depth)) if student.depth < 1 else None,
        mlp_ratio=student.width if student.width < 1 else None,
        **{**_training_kwargs(cfg), "lr": cfg.lr if cfg.lr is not None else LR_HIDDEN_CUT},
    )


def _prune_config(student: Student, cfg: CompressConfig):
    from .prune import PruneConfig

    if student.heads < 1:  # the image tower only (CLIP's text tower keeps its width)
        kw = _training_kwargs(cfg)
        if cfg.heads_epochs is None:  # prune's own recovery: its passes for the cut, over its samples
            kw.update(epochs=None, samples=PruneConfig.samples)
        else:
            kw.update(epochs=cfg.heads_epochs)
        return PruneConfig(
            heads=student.heads, mlp=student.width if student.width < 1 else None, towers=("vision",), **kw
        )
    return PruneConfig(mlp=student.width, **_training_kwargs(cfg))


def _pruned(student: Student) -> bool:
    """Width and heads at full depth go through the pruner (activation importance); depth through the distiller."""
    return student.depth == 1.0 and (student.width < 1.0 or student.heads < 1.0)


def heads_axis_supported(family: str) -> bool:
    """Whether the family's pruner can take heads out of the image tower (declared by its TowerLayout)."""
    from .families import families
    from .prune import HEAD_MODES

    fam = families()[family]
    if not fam.can(Capability.PRUNE):
        return False
    vision = fam.pruner.towers.get("vision")
    return vision is not None and vision.heads in HEAD_MODES


def unmakeable(student: Student, family: str) -> str | None:
    """Why the family cannot make this student (from what it declares), or None: depth goes through
    the distiller, width and heads at full depth through the pruner and its recovery, heads only where
    its image tower's layout can lose them."""
    from .families import families

    fam = families()[family]
    if student.is_teacher:
        return None
    if not _pruned(student):
        return None if fam.can(Capability.DISTILL) else "cannot distill: the depth axis is left out"
    if not fam.can(Capability.PRUNE):
        return "cannot prune: the width and heads axes are left out"
    if fam.pruner.recovery is None:
        return "cannot recover a pruned student: the width and heads axes are left out"
    if student.heads < 1 and not heads_axis_supported(family):
        return "cannot drop its image tower's attention heads (prune takes --mlp): the --heads axis is left out"
    return None


REPORTS = ("prune.json", "distill.json")


def _student_report(folder: Path) -> dict[str, Any] | None:
    for name in REPORTS:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def _made_by(student: Student, report: dict[str, Any] | None) -> dict[str, Any]:
    if report is None:
        return {"by": "teacher", "depth": 1.0, "width": 1.0, "heads": 1.0}
    towers = report["student"]["towers"]
    pruned = "recovery" in report
    return {
        "by": "prune (heads, residual and MLP channels ranked by activation importance) + recovery by "
        "distillation from the teacher"
        if pruned and student.heads < 1
        else "prune (MLP channels ranked by activation importance) + recovery by distillation from the teacher"
        if pruned
        else "distill (evenly spaced layers kept, MLP units ranked by weight norm) + distillation from the teacher",
        "depth": student.depth,
        "width": student.width,
        "heads": student.heads,
        "layers": {n: t["layers"] for n, t in towers.items()},
        "mlp": {n: t["mlp"] for n, t in towers.items()},
        **({"attention_heads": {n: t["heads"] for n, t in towers.items()}} if pruned else {}),
        "parameters": report["student"]["parameters"],
        "epochs": report["recipe"]["epochs"],
        "samples": report["recipe"]["samples"],
        "train_seconds": report["recovery"]["seconds"] if pruned else report["train_seconds"],
        "student_top1_pytorch": report["fidelity"].get("student_top1"),
    }


def _make_student(
    teacher: str,
    student: Student,
    out: Path,
    teacher_cfg,
    cfg: CompressConfig,
    random_weights: bool,
    log: Callable[[str], None],
    progress,
) -> dict[str, Any]:
    """The one place the model axes become a checkpoint folder at `out` (returns its report):
    width alone through exporter/prune.py (importance-ranked MLP channels, recovered from the
    teacher), depth (with or without width) through the distiller (fewer layers, MLP narrowed
    by weight norm)."""
    if _pruned(student):
        from .prune import STATE_DIR_SUFFIX, prune

        state = out.parent / f"{out.name}{STATE_DIR_SUFFIX}"
        return prune(
            teacher,
            out,
            _prune_config(student, cfg),
            random_weights=random_weights,
            resume=state.is_dir(),
            log=log,
            progress=progress,
        )
    from .distill import distill

    state = out.parent / f"{out.name}.distill-state"
    return distill(
        teacher,
        out,
        _distill_config(student, teacher_cfg, cfg),
        random_weights=random_weights,
        resume=state.is_dir(),
        log=log,
        progress=progress,
    )


def _student_current(folder: Path, student: Student, teacher_cfg, cfg: CompressConfig, teacher_sha: str) -> bool:
    """A student folder of an earlier run made the same way with these very settings from this teacher."""
    report = _student_report(folder)
    if report is None or ("recovery" in report) != _pruned(student):
        return False
    want = (_prune_config(student, cfg) if _pruned(student) else _distill_config(student, teacher_cfg, cfg)).recipe()
    got = report.get("recipe", {})
    return got.get("teacher_sha256") == teacher_sha and all(got.get(k) == v for k, v in want.items())


# --------------------------------------------------------------------------- estimate and trim


def _step_seconds(model, batch: int, threads: int | None) -> tuple[float, float]:
    """One training step of the full-size model, timed here: (the image batch, the texts a CLIP step
    embeds when its text tower trains). A student that keeps the teacher's text tower pays only the
    first (measured on clip-shapes: timing both for every student overestimated a search 2.8x)."""
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    vc, tc = model.config.vision_config, model.config.text_config
    px = torch.randn(batch, 3, vc.image_size, vc.image_size)
    ids = torch.randint(0, tc.vocab_size, (batch + batch // 2 + 256, min(16, tc.max_position_embeddings)))
    from .distill import _training_threads

    def timed(forward) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            out = forward()
            getattr(out, "pooler_output", out).float().pow(2).mean().backward()  # transformers 4: the tensor
            times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
        return float(np.median(times[1:]))

    with _training_threads(threads, torch.device("cpu"), lambda _: None):  # the threads training will use
        image_s = timed(lambda: model.get_image_features(pixel_values=px))
        text_s = timed(lambda: model.get_text_features(input_ids=ids))
    return image_s, text_s


def estimate(
    students: list[Student],
    to_train: list[Student],
    to_export: list[Student],
    step: tuple[float, float],
    params: int,
    cfg: CompressConfig,
    components: int = 2,
) -> float:
    """Minutes: training (the timed steps, scaled by the share of the model each student trains),
    export and scoring (constants measured on clip-shapes, scaled by size) and the tournament."""
    size = max(1.0, params / REFERENCE_PARAMS)
    variants = len(cfg.precisions) * len(cfg.backends)
    train = sum(cfg.train_seconds(s, step) for s in to_train)
    # the teacher's image embeddings of every training and held-out image: a forward is ~1/3 of a step
    prepare = len(to_train) * (cfg.samples + cfg.eval_images) / cfg.batch_size * step[0] / 3
    export = len(to_export) * variants * EXPORT_S_PER_VARIANT * size
    score = len(students) * variants * SCORE_S_PER_VARIANT * size * cfg.eval_images / 500
    timing = len(students) * variants * components * cfg.timing_seconds * 1.5
    return (train + prepare + export + score + timing) / 60


def fit_budget(
    students: list[Student],
    to_train: list[Student],
    to_export: list[Student],
    budget_min: float | None,
    minutes_of: Callable[[list[Student], list[Student], list[Student]], float],
    cost: Callable[[Student], float] = lambda s: s.depth * s.width**0.5,
) -> tuple[list[Student], list[Student], list[Student], list[str], float]:
    """Leave out students that need training, costliest first (the most layers and width kept),
    until minutes_of(students, to_train, to_export) fits budget_min; cached students and the
    teacher always stay. Returns the kept lists, the keys left out and the estimate."""
    students, to_train, to_export = list(students), list(to_train), list(to_export)
    minutes, dropped = minutes_of(students, to_train, to_export), []
    if budget_min is None:
        return students, to_train, to_export, dropped, minutes
    for s in sorted(to_train, key=lambda s: -cost(s)):
        if minutes <= budget_min:
            break
        students.remove(s)
        to_train.remove(s)
        to_export = [x for x in to_export if x != s]
        dropped.append(s.key)
        minutes = minutes_of(students, to_train, to_export)
    return students, to_train, to_export, dropped, minutes


# --------------------------------------------------------------------------- scoring and timing


def top1(bundle, backend: str, precision: str, data, threads: int | None) -> float:
    """Zero-shot top-1 of one variant, run as a user runs it (the pipeline's own pre-processing)."""
    import numpy as np

    from ..runtimes.select import load

    pipe = load(bundle, backend, precision, threads=threads)
    text = pipe.embed_texts([data.template.format(c) for c in data.class_names])
    img = pipe.embed_images(data.images)
    pred = (img @ text.T).argmax(-1)
    truth = np.array([data.class_names.index(label) for label in data.labels])
    return float((pred == truth).mean())


def time_candidates(
    candidates: dict[str, tuple[Any, str, str]], data, cfg: CompressConfig
) -> tuple[dict[str, dict[str, float]], int]:
    """{candidate: {component: median batch-1 ms}}: one alternating tournament per component,
    every candidate turn by turn (choose.py's blocks of calls after untimed ones)."""
    import numpy as np

    from ..common.timing import alternating, runs_for
    from ..runtimes.feeds import BundleFeeds
    from .choose import TIMING_BLOCK, TIMING_SETTLE

    out: dict[str, dict[str, float]] = {k: {} for k in candidates}
    first = next(iter(candidates.values()))[0]
    turns = 0
    for comp in first.components:
        runners = {}
        for key, (bundle, backend, precision) in candidates.items():
            from ..runtimes.select import open_session

            art = bundle.find(comp, backend, precision)[0]
            sess = open_session(bundle, art, cfg.threads)
            feeds = BundleFeeds(bundle, data).feeds(comp, 1)
            runners[key] = lambda s=sess, f=feeds: s.run(f)
        turns = runs_for(runners, cfg.timing_seconds * len(runners), 3, 40, TIMING_BLOCK, TIMING_SETTLE)
        times = alternating(runners, turns, 2, block=TIMING_BLOCK, settle=TIMING_SETTLE)
        for key, v in times.items():
            out[key][comp] = round(float(np.median(v)), 4)
        del runners
    return out, turns


# --------------------------------------------------------------------------- the search


def cache_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.compress-cache"


CALIBRATION_IMAGES = 256  # more than quantize reads (--samples 32 by default)


def calibration_source(data: str, cache: Path) -> str:
    """INT8 calibration data for every student's export. `shapes` is written once into the cache as
    a folder of its first training images (the same images quantize reads first): quantize opens
    the named set whole, and drawing shapes' 24,000 training images took 25 s of CPU per INT8
    export (4 min on the busy 2-core machine this was measured on)."""
    if data != "shapes":
        return data
    from ..common.datasets.shapes import write_split
    from .checkpoint import scratch_dir

    folder = cache / f"calibration-shapes-train-{CALIBRATION_IMAGES}"
    if not (folder / "labels.tsv").is_file():
        with scratch_dir(cache) as tmp:
            write_split(Path(tmp) / "split", "train", CALIBRATION_IMAGES)
            os.replace(Path(tmp) / "split", folder)
    return str(folder)


def _load_state(cache: Path) -> dict[str, Any]:
    try:
        return json.loads((cache / CACHE_STATE).read_text())
    except (OSError, ValueError):
        return {"bundles": {}, "scores": {}}


def _save_state(cache: Path, state: dict[str, Any]) -> None:
    tmp = cache / (CACHE_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, cache / CACHE_STATE)


def compress(
    teacher: str,
    out: str | os.PathLike,
    cfg: CompressConfig,
    random_weights: bool = False,
    log: Callable[[str], None] = print,
    progress=None,
) -> dict[str, Any]:
    """Search the declared space, write the chosen student's bundle to `out` with the `compress`
    record in its manifest (its default variant here: the pick), and return that record."""
    from ..common.env import MachineLoad
    from ..common.locks import writer_lock
    from ..runtimes.bundle import Bundle, BundleWriter, check_replaceable
    from ..runtimes.select import machine_key
    from .checkpoint import resolve, weights_sha256
    from .choose import TIMING_BLOCK, TIMING_SETTLE
    from .export import export

    t0 = time.perf_counter()
    out = Path(out).absolute()
    check_config(cfg)
    family = check_source(teacher)
    data = evaluation_data(cfg.data, cfg.eval_images)
    check_replaceable(out)
    cache = cache_dir(out)

    log(f"loading teacher {teacher}{' (random weights)' if random_weights else ''}")
    ckpt = resolve(teacher, random_weights=random_weights)
    teacher_sha = ckpt.source["weights_sha256"]
    students = list(dict.fromkeys(cfg.students()))
    if Student() not in students:  # the baseline every drop is measured against
        students.insert(0, Student())
    why = {s: unmakeable(s, family) for s in students}
    for reason in dict.fromkeys(w for w in why.values() if w):  # each reason once
        log(f"{teacher}: the {family} family {reason}")
    students = [s for s in students if why[s] is None]
    folders = {s: cache / "students" / s.key for s in students if not s.is_teacher}
    state = _load_state(cache)
    to_train = [
        s
        for s in students
        if not s.is_teacher and not _student_current(folders[s], s, ckpt.model.config, cfg, teacher_sha)
    ]
    to_export = [s for s in students if s.key not in state.get("bundles", {}) or s in to_train]
    params = sum(p.numel() for p in ckpt.model.parameters())
    step = _step_seconds(ckpt.model, cfg.batch_size, cfg.threads) if to_train else (0.0, 0.0)
    students, to_train, to_export, dropped, minutes = fit_budget(
        students,
        to_train,
        to_export,
        cfg.budget_min,
        lambda s, t, e: estimate(s, t, e, step, params, cfg),
        cost=lambda s: cfg.train_seconds(s, step),
    )
    if cfg.budget_min is not None and minutes > cfg.budget_min:
        raise InputError(
            f"--budget-min {cfg.budget_min:g}: the smallest search left ({', '.join(s.key for s in students)}, "
            f"nothing to train) needs about {minutes:.1f} min here; give more minutes or fewer --precision / --backend"
        )
    est = Estimate(minutes, [s.key for s in to_train], dropped)
    log(est.line())
    if dropped:
        log(f"--budget-min {cfg.budget_min:g}: left out {', '.join(dropped)} (the costliest to train)")
    teacher_cfg = ckpt.model.config
    del ckpt

    variants = [(b, p) for b in cfg.backends for p in cfg.precisions]
    n_candidates = len(students) * len(variants)
    task = progress.add_task("compress", total=n_candidates) if progress else None

    def advance(what: str, n: int = 0) -> None:
        if progress:
            progress.update(task, advance=n, description=what)

    with writer_lock(cache, "compress cache"):
        (cache / "students").mkdir(parents=True, exist_ok=True)
        (cache / "bundles").mkdir(parents=True, exist_ok=True)
        calib = calibration_source(cfg.data, cache) if "int8" in cfg.precisions else None
        made: dict[Student, dict[str, Any]] = {}
        bundles: dict[Student, Bundle] = {}
        for s in students:
            folder = teacher if s.is_teacher else str(folders[s])
            report = None
            if not s.is_teacher:
                if s in to_train:
                    advance(f"training {s.key}")
                    log(f"{s.key}: training the student (cached in {folders[s]})")
                    _make_student(teacher, s, folders[s], teacher_cfg, cfg, random_weights, log, progress)
                else:
                    log(f"{s.key}: student cached in {folders[s]}")
                report = _student_report(folders[s])
            made[s] = _made_by(s, report)
            bdir = cache / "bundles" / s.key
            sha = teacher_sha if s.is_teacher else weights_sha256(folders[s])
            cached = state["bundles"].get(s.key)
            if (
                s in to_export
                or not cached
                or cached.get("weights_sha256") != sha
                or not (bdir / "manifest.json").is_file()
            ):
                advance(f"exporting {s.key}")
                state["scores"] = {k: v for k, v in state["scores"].items() if not k.startswith(s.key + "/")}
                export(
                    folder,
                    bdir,
                    backends=list(cfg.backends),
                    precisions=list(cfg.precisions),
                    random_weights=random_weights and s.is_teacher,
                    threads=cfg.threads,
                    log=log,
                    calib=calib,
                )
                state["bundles"][s.key] = {"weights_sha256": sha, "source": folder}
                _save_state(cache, state)
            else:
                log(f"{s.key}: bundle cached in {bdir}")
            bundles[s] = Bundle.open(bdir)

        rows: list[dict[str, Any]] = []
        where: dict[str, tuple[Any, str, str]] = {}
        for s in students:
            b = bundles[s]
            for backend, precision in variants:
                cid = f"{s.key}/{backend}/{precision}"
                arts = b.find(backend=backend, precision=precision)
                if {a.component for a in arts} != set(b.components):
                    log(f"{cid}: not built (see the export's log above); left out")
                    advance(f"{cid}: not built", 1)
                    continue
                advance(f"scoring {cid}")
                score = state["scores"].get(cid)
                if score is None:
                    score = {"top1": top1(b, backend, precision, data, cfg.threads), "n": len(data.images)}
                    state["scores"][cid] = score
                    _save_state(cache, state)
                rows.append(
                    {
                        "id": cid,
                        "student": s.key,
                        "backend": backend,
                        "precision": precision,
                        "top1": round(score["top1"], 6),
                        "gate_passed": all(a.passed for a in arts),
                        "mb": round(sum(b.manifest["files"][f]["bytes"] for a in arts for f in a.files) / 1e6, 3),
                        "made": made[s],
                        "bundle": str(b.root),
                    }
                )
                where[cid] = (b, backend, precision)
                advance(f"scored {cid}", 1)
        if not rows:
            raise InputError("no candidate could be built: see the export messages above")
        advance("timing every candidate")
        log(f"timing {len(rows)} candidates at batch 1, turn by turn ({cfg.timing_seconds:g} s each per component)")
        with MachineLoad() as load:
            times, turns = time_candidates(where, data, cfg)
    if load.result.get("busy"):
        log(f"warning: busy machine while timing ({load.result['why']}): the pick may not hold on a quiet one")

    for r in rows:
        r["ms_by_component"] = times[r["id"]]
        r["ms"] = round(sum(times[r["id"]].values()), 4)
    base_row = next(
        (r for r in rows if r["student"] == Student().key and r["precision"] == "fp32"),
        None,
    )
    if base_row is None:
        raise InputError("the teacher's fp32 variant was not built: it is the baseline every drop is measured against")
    baseline = base_row["top1"]
    for r in rows:
        r["drop_points"] = drop_points(r["top1"], baseline)
        why = eligible(r, baseline, cfg.max_drop, cfg.budget_ms)
        r["passed"] = why is None
        if why:
            r["why_not"] = why
    front = pareto_front(rows)
    for i, r in enumerate(rows):
        r["on_front"] = i in front
    won = pick(rows, baseline, cfg.max_drop, cfg.budget_ms)
    for r in sorted(rows, key=lambda r: r["ms"]):
        log(
            f"{r['id']}: top-1 {r['top1']:.2%} ({-r['drop_points']:+.2f} pt), {r['ms']:.3f} ms, {r['mb']:.2f} MB"
            + (" [front]" if r["on_front"] else "")
            + (f" - {r['why_not']}" if "why_not" in r else "")
        )
    if won is None:
        fastest = min(rows, key=lambda r: r["ms"])
        raise InputError(
            f"no candidate passed --max-drop {cfg.max_drop:g}"
            + (f" within --budget-ms {cfg.budget_ms:g}" if cfg.budget_ms is not None else "")
            + f" (the fastest, {fastest['id']}, ran {fastest['ms']:.3f} ms); {out} not written, the figures "
            f"are cached in {cache}: rerun with other limits"
        )
    chosen = rows[won]
    record = {
        "teacher": teacher,
        "data": data.name,
        "max_drop": cfg.max_drop,
        **({"budget_ms": cfg.budget_ms} if cfg.budget_ms is not None else {}),
        "baseline": {"candidate": base_row["id"], "top1": baseline, "images": len(data.images)},
        "space": {
            "depth": list(cfg.depths),
            "width": list(cfg.widths),
            "heads": list(cfg.heads),
            "precision": list(cfg.precisions),
            "backend": list(cfg.backends),
            "students": [s.key for s in students],
            **({"left_out_by_budget": dropped} if dropped else {}),
            "training": {
                "epochs": cfg.epochs,
                "samples": cfg.samples,
                "batch_size": cfg.batch_size,
                "heads_epochs": cfg.heads_epochs,
            },
            "steps": {s.key: cfg.steps(s) for s in students if not s.is_teacher},
        },
        "candidates": rows,
        "front": [rows[i]["id"] for i in front],
        "chosen": chosen["id"],
        "default": {"backend": chosen["backend"], "precision": chosen["precision"]},
        "why": f"fastest of the {sum(r['passed'] for r in rows)} of {len(rows)} candidates that passed",
        "machine": machine_key(),
        "threads": cfg.threads,
        "timing": f"batch 1, summed over components; per component every candidate in turn, median over "
        f"{turns} turns of {TIMING_BLOCK} calls (after {TIMING_SETTLE} untimed)",
        "machine_load": load.result,
        "estimated_minutes": round(minutes, 1),
        "cache": str(cache),
    }
    record["seconds"] = round(time.perf_counter() - t0, 1)  # all but the copy below
    src = bundles[next(s for s in students if s.key == chosen["student"])]
    with BundleWriter(out, base=src, log=log) as w:
        w.manifest["compress"] = record
        table = {f"{r['backend']}/{r['precision']}": r["ms"] for r in rows if r["student"] == chosen["student"]}
        section = "measured_busy" if load.result.get("busy") else "measured"
        entry = table if section == "measured" else {k: {"ms": v, "busy": load.result["why"]} for k, v in table.items()}
        w.manifest.setdefault(section, {}).setdefault(machine_key(), {}).update(entry)
    log(
        f"chose {chosen['id']}: top-1 {chosen['top1']:.2%} ({chosen['drop_points']:.2f} points below the teacher's "
        f"{baseline:.2%}), {chosen['ms']:.3f} ms at batch 1; bundle written to {out} in {record['seconds']:.0f} s"
    )
    return record
