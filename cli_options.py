"""Option types that cli.py's commands share, each spelled once (typer `Annotated` aliases).

A command declares `threads: Threads = None` instead of repeating the option's range and help.
Where two commands give the same flag a different meaning, each meaning has its own alias (the
`_threads` helper keeps the range in one place); a flag only one command has stays in its command.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer


def _threads(help: str) -> Any:
    return Annotated[int | None, typer.Option(min=1, max=1024, help=help)]


Threads = _threads("Threads (default: all cores).")
ParityThreads = _threads("Threads for parity checks (default: all cores).")  # export
BenchThreads = _threads("Threads for every backend and PyTorch (default: all cores).")  # bench
ServeThreads = _threads("Inference threads per session (default: all cores).")  # serve
TorchThreads = _threads("Torch CPU threads (default: all cores).")  # distill

# the variant a command that runs one bundle loads (load()'s backend= / precision=)
Backend = Annotated[str | None, typer.Option(help="Backend (default: the bundle's default variant).")]
Precision = Annotated[str | None, typer.Option(help="Precision (default: the bundle's default variant).")]

# distill, prune and compress score the student on held-out data: fewer for a quick look at a large twin
EvalImages = Annotated[
    int,
    typer.Option(
        min=1,
        help="Held-out images the student is scored on against the teacher (their questions for VQA); "
        "fewer for a quick look at a large model.",
    ),
]
BundleDir = Annotated[Path, typer.Argument(help="Bundle directory.")]
NumBeams = Annotated[int | None, typer.Option(help="Beam search width; 1 = greedy (default: the checkpoint's).")]
JsonReport = Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")]


# -- batch jobs (`embed` and `caption` over whole folders; jobs/runner.py) -------------------------

JOB_PANEL = "Batch jobs"


@dataclass(frozen=True)
class JobFlags:
    """The batch-job flags `embed` and `caption` share, passed to jobs.runner.run_job as keywords."""

    batch: int | None = None
    shard_size: int | None = None
    workers: int | None = None
    resume: bool = False
    overwrite: bool = False
    ray: str | None = None
    ray_actors: int | None = None
    ray_cpus: float | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def _job_option(*decls: str, help: str) -> Any:
    return typer.Option(*decls, help=help, rich_help_panel=JOB_PANEL)


_JOB_OPTIONS: dict[str, Any] = {  # JobFlags field -> its option's type (the default is JobFlags')
    "batch": Annotated[
        int | None, _job_option("--batch", help="Items per inference call (default: 64 embed, 8 caption).")
    ],
    "shard_size": Annotated[
        int | None,
        _job_option(
            "--shard-size",
            help="Inputs per Parquet shard, the unit of resume (default: 4096 images, 16384 texts, 512 captions).",
        ),
    ],
    "workers": Annotated[
        int | None, _job_option("--workers", help="Decode threads beside inference (default: half the cores).")
    ],
    "resume": Annotated[
        bool,
        _job_option("--resume", help="Continue the job in --out: finished shards are kept, the rest computed."),
    ],
    "overwrite": Annotated[
        bool, _job_option("--overwrite", help="Start the job in --out again (removes only job files).")
    ],
    "ray": Annotated[
        str | None,
        _job_option(
            "--ray", help="Run on Ray: 'local' (a local instance) or a cluster address (ray://HOST:10001, auto)."
        ),
    ],
    "ray_actors": Annotated[
        int | None,
        _job_option(
            "--ray-actors", help="Ray actors, each loading the bundle once (default: cluster CPUs / --ray-cpus)."
        ),
    ],
    "ray_cpus": Annotated[
        float | None, _job_option("--ray-cpus", help="CPUs per Ray actor (default: a node's, up to 8).")
    ],
}


def job_flags(fn):
    """Give a command the batch-job flags in place of its `job: JobFlags` parameter.

    typer reads the command's signature: the wrapper shows it the eight options where `job`
    stood (same order, same panel in --help) and hands the function one JobFlags built from them."""
    sig = inspect.signature(fn, eval_str=True)
    params = []
    for p in sig.parameters.values():
        if p.name != "job":
            params.append(p)
            continue
        for f in fields(JobFlags):
            params.append(inspect.Parameter(f.name, p.kind, default=f.default, annotation=_JOB_OPTIONS[f.name]))
    names = [f.name for f in fields(JobFlags)]
    assert len(params) == len(sig.parameters) - 1 + len(names), f"{fn.__name__} has no `job: JobFlags` parameter"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        job = JobFlags(**{n: kwargs.pop(n) for n in names if n in kwargs})
        return fn(*args, job=job, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
