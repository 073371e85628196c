"""What one job computes per item, split in two so decoding never waits on inference:

- ``Preparer``: one input -> what the model eats (an image file -> preprocessed pixels; a line of
  text -> the checked text). Cheap to build (the bundle's preprocess block only, no sessions), run
  on worker threads locally and as plain Ray tasks on a cluster. A broken input raises
  MMDeployError with a one-line reason; the runner records it and goes on.
- ``Inferer``: a batch of prepared items -> one output each, on one opened variant. Built once per
  worker (the local runner: once; Ray: once per actor). An item that fails inside a batch fails
  alone: the batch is retried item by item.

A ``TaskSpec`` is plain data, so Ray can ship it to another machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..common.capabilities import Capability, needs
from ..errors import InputError, MMDeployError, one_line
from .inputs import MAX_TEXT_CHARS

TASKS = {
    # task -> (input column, output column, the capability a bundle needs for it)
    "image-embedding": ("path", "embedding", Capability.EMBED_IMAGES),
    "text-embedding": ("text", "embedding", Capability.EMBED_TEXTS),
    "caption": ("path", "caption", Capability.CAPTION),
}


@dataclass
class TaskSpec:
    task: str
    bundle: str
    backend: str | None = None
    precision: str | None = None
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # caption: max_new_tokens, num_beams, prompt

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown job task {self.task!r} (known: {', '.join(TASKS)})")

    @property
    def input_column(self) -> str:
        return TASKS[self.task][0]

    @property
    def output_column(self) -> str:
        return TASKS[self.task][1]

    @property
    def capability(self) -> Capability:
        return TASKS[self.task][2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reason(exc: BaseException) -> str:
    """Why an item is broken, one line: our own errors as they read, others with their type."""
    return one_line(exc) if isinstance(exc, MMDeployError) else f"{type(exc).__name__}: {one_line(exc)}"


class Preparer:
    def __init__(self, spec: TaskSpec, bundle: Any = None):
        """``bundle``: the spec's bundle already opened (a Ray actor opens it from the spec)."""
        from ..runtimes.bundle import Bundle
        from ..runtimes.feeds import image_preprocessor
        from ..runtimes.pipelines import families_that

        self.spec = spec
        self.preprocess = None
        if spec.input_column == "path":
            bundle = bundle or Bundle.open(spec.bundle)
            self.preprocess = image_preprocessor(bundle)
            if self.preprocess is None:
                raise InputError(
                    f"{bundle.root} is a {bundle.family} bundle without image preprocessing: "
                    f"{spec.task} needs {needs(spec.capability, families_that(spec.capability))}"
                )

    def __call__(self, item: str) -> Any:
        if self.preprocess is not None:
            # (H, W, 3) -> (3, H, W): the models' layout, so a batch is one np.stack
            return np.ascontiguousarray(self.preprocess.process_one(item).transpose(2, 0, 1))
        if not item.strip():
            raise InputError("empty line")
        if len(item) > MAX_TEXT_CHARS:
            raise InputError(f"line of {len(item)} characters (limit {MAX_TEXT_CHARS})")
        return item


class Inferer:
    def __init__(self, spec: TaskSpec, bundle: Any = None):
        """The bundle can do the task (plan_job checked it); ``bundle``: already opened, or the spec's."""
        from ..runtimes import load

        self.spec = spec
        self.pipe = load(bundle or spec.bundle, spec.backend, spec.precision, spec.threads)
        if spec.task == "caption":  # bad generation options fail the job before it starts, not every item
            from ..runtimes.generate import check_length

            o = spec.options
            cfg = self.pipe.config(o.get("max_new_tokens"), o.get("num_beams"), o.get("prompt"))
            check_length(cfg, len(cfg.start_ids))

    @property
    def variant(self) -> str:
        return self.pipe.variant

    def _run(self, items: list[Any]) -> list[Any]:
        if self.spec.task == "text-embedding":
            return list(self.pipe.embed_texts(items, batch_size=len(items)))
        px = np.stack(items)
        if self.spec.task == "image-embedding":
            return list(self.pipe.embed_pixels(px))
        o = self.spec.options
        ids = self.pipe.generate_ids(px, o.get("max_new_tokens"), o.get("num_beams"), o.get("prompt"))
        return [self.pipe.decode(i) for i in ids]

    def __call__(self, items: list[Any]) -> list[tuple[Any, str | None]]:
        """(output, None) or (None, reason) per item, in order."""
        out: list[tuple[Any, str | None]] = [(None, None)] * len(items)
        # images of different sizes (a preprocessing without a fixed size) cannot share a batch
        groups: dict[Any, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.shape if isinstance(it, np.ndarray) else None, []).append(i)
        for idx in groups.values():
            try:
                res = self._run([items[i] for i in idx])
                for i, r in zip(idx, res):
                    out[i] = (r, None)
            except Exception:  # noqa: BLE001 - a backend error on one item must not fail its batch
                self._one_by_one(items, idx, out)
        return out

    def _one_by_one(self, items, idx, out) -> None:
        for i in idx:
            try:
                out[i] = (self._run([items[i]])[0], None)
            except Exception as exc:  # noqa: BLE001
                out[i] = (None, reason(exc))
