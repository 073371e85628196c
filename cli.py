"""mmdeploy command line: one thin function per command; the work lives in the library."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import typer

from .cli_options import (
    JOB_PANEL,
    Backend,
    BenchThreads,
    BundleDir,
    EvalImages,
    JobFlags,
    JsonReport,
    NumBeams,
    ParityThreads,
    Precision,
    ServeThreads,
    Threads,
    TorchThreads,
    job_flags,
)
from .common.signals import install_signal_handlers as _install_signal_handlers  # tests replace it here
from .common.signals import terminate as _terminate  # noqa: F401 - tests/test_hostile.py imports it from here
from .errors import MMDeployError

app = typer.Typer(
    name="mmdeploy",
    help="Deploy CLIP, captioning and VQA checkpoints: export to ONNX, build ONNX Runtime / OpenVINO "
    "variants, benchmark them against PyTorch, run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _console(stderr: bool = False):
    """Rich console; wide enough for the tables when output is not a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


def _err_console():
    return _console(stderr=True)


def user_errors(fn):
    """MMDeployError -> one line on stderr, exit 2 (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _check_finite(kwargs)
            from .common.locks import configure

            configure(wait=not kwargs.get("no_wait", False))  # writers of a bundle or job folder
            return fn(*args, **kwargs)
        except MMDeployError as exc:
            if _state["debug"]:
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted: nothing was written", file=sys.stderr)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug or a bundle no check caught
            if _state["debug"]:
                raise
            from .common.diskspace import is_resource_error, resource_error
            from .errors import one_line

            if is_resource_error(exc):  # a full disk, a quota, a read-only file system: not a bug
                where = getattr(exc, "filename", None) or "."
                print(f"error: {resource_error(exc, where, f'writing {where}')}", file=sys.stderr)
                raise typer.Exit(2) from None
            print(
                f"error: unexpected {type(exc).__name__}: {one_line(exc, 300)} "
                "(a corrupt or hand-edited bundle? re-export it; --debug shows the traceback)",
                file=sys.stderr,
            )
            raise typer.Exit(1) from None
        finally:
            from .common.locks import configure

            configure()  # --no-wait was for this command only (tests and scripts run several in one process)

    return wrapper


# every command that writes a bundle or a job folder takes it (user_errors reads it)
_NO_WAIT = typer.Option(
    False,
    "--no-wait",
    help="If another command is writing the same bundle or job folder, exit (code 2) naming it instead of waiting.",
)


def _check_finite(kwargs: dict) -> None:
    """click's float ranges let nan and inf through (every comparison with nan is False)."""
    import math

    from .errors import InputError

    for name, v in kwargs.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"--{name.replace('_', '-')} {v}: must be a finite number")


def _output_file(path: Path | None, flag: str) -> None:
    """Check a report path before the work that fills it: a bench run must not end in a traceback."""
    import os

    from .errors import InputError

    if path is None:
        return
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{flag} {path}: folder {parent} is not writable")
    from .runtimes.bundle import cannot_write_in

    if why := cannot_write_in(parent):
        raise InputError(f"{flag} {path}: {why}")


def _exclusions(value: str) -> list[str]:
    """--exclude: op types, globs or regexes ('none': quantize everything); a pattern that is
    neither a valid regex nor a glob would silently match nothing."""
    import re

    from .errors import InputError
    from .runtimes.session import parse_list

    items = parse_list(value, None, "exclude")
    for p in items:
        try:
            re.compile(p)
        except re.error as exc:
            if not any(c in p for c in "*?"):
                raise InputError(f"--exclude {p!r}: not a valid regex ({exc}) nor a glob") from None
    return [p for p in items if p != "none"]


def _check_data(spec: str | None, flag: str) -> None:
    """A data set named on the command line exists, before minutes of export or quantization."""
    if spec is not None:
        from .common.datasets import check_spec

        check_spec(spec, flag)


def _log(msg: str) -> None:
    _err_console().print(f"[dim]·[/dim] {msg}", highlight=False)


def _progress(remaining: bool = False):
    """A progress bar on stderr that goes when done (bench; distill adds the time remaining)."""
    from rich import progress as p

    columns = [p.TextColumn("{task.description}"), p.BarColumn(), p.MofNCompleteColumn(), p.TimeElapsedColumn()]
    columns += [p.TimeRemainingColumn()] if remaining else []
    return p.Progress(*columns, console=_err_console(), transient=True)


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")):
    _state["debug"] = debug


@app.command()
@user_errors
def models():
    """List the models in the registry (models.yaml)."""
    from rich.table import Table

    from .exporter.registry import registry

    t = Table("name", "family", "source", "description")
    for name, ent in registry().items():
        if ent.get("path"):
            src = f"shipped: {ent['path']}"
        elif ent.get("package"):
            src = f"package: {ent['package']}/{ent.get('subdir', '')} (mmdeploy[fixtures])"
        else:
            src = f"hub: {ent.get('hub')} (or --random-weights)"
        t.add_row(name, ent["family"], src, ent.get("description", ""))
    _console().print(t)


@app.command()
@user_errors
def export(
    source: str = typer.Argument(
        ..., help="models.yaml name (see `mmdeploy models`) or a local Hugging Face checkpoint folder."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Bundle directory to write (replaced atomically if it exists)."
    ),
    backend: str = typer.Option("onnxruntime,openvino", help="Comma-separated backends: onnxruntime, openvino."),
    precision: str = typer.Option(
        "fp32",
        help="Comma-separated precisions: fp32, bf16 (openvino), int8, fp16, int4 (captioners, onnxruntime) (int8/fp16/int4 run `quantize` in the same atomic step). best (encoder bundles): fp32, bf16 where this CPU has it, the fastest INT8 recipe that passes its gate per backend (`quantize --mode best`), all timed here so the default variant is the fastest.",
    ),
    target: str = typer.Option("cpu", help="Where the bundle will run: cpu (gpu/jetson: see TensorRT)."),
    calib: str | None = typer.Option(
        None,
        help="INT8 calibration data (image folder, text file, 'shapes', 'photos'); without it ORT INT8 is dynamic.",
    ),
    method: str = typer.Option("minmax", help="INT8 calibration method: minmax, entropy, percentile."),
    min_cosine: float | None = typer.Option(None, help="INT8 accuracy-aware target (cosine vs fp32)."),
    random_weights: bool = typer.Option(
        False,
        "--random-weights",
        help="Build the model from its models.yaml config with random weights (a shape twin for latency work).",
    ),
    threads: ParityThreads = None,
    no_wait: bool = _NO_WAIT,
):
    """Export a checkpoint to a bundle: ONNX per component + backend variants, each checked against PyTorch."""
    from .exporter.export import export as run_export
    from .runtimes.backends import backend_names
    from .runtimes.session import PRECISIONS, parse_list

    _check_data(calib, "--calib")
    bundle = run_export(
        source,
        output,
        backends=parse_list(backend, backend_names(), "backend"),
        precisions=parse_list(precision, (*PRECISIONS, "best"), "precision"),
        target=target,
        random_weights=random_weights,
        threads=threads,
        log=_log,
        calib=calib,
        method=method,
        min_cosine=min_cosine,
    )
    _print_info(bundle)


@app.command()
@user_errors
def bench(
    bundle: BundleDir,
    backend: str | None = typer.Option(None, help="Only these backends (comma-separated)."),
    precision: str | None = typer.Option(None, help="Only these precisions (comma-separated)."),
    batch: str = typer.Option("1", help="Comma-separated batch sizes, e.g. 1,8."),
    runs: int = typer.Option(20, min=1, help="Timed runs per variant and batch."),
    warmup: int = typer.Option(3, min=0, help="Untimed warm-up runs."),
    threads: BenchThreads = None,
    data: str | None = typer.Option(
        None,
        help="Inputs: 'photos' (real photos, default), 'shapes' (labelled test split: adds zero-shot accuracy), an image folder (labels.tsv adds accuracy) or a text file.",
    ),
    no_pytorch: bool = typer.Option(False, "--no-pytorch", help="Skip the PyTorch reference row."),
    interleave: bool = typer.Option(
        False,
        "--interleave",
        help="Encoder bundles: alternate PyTorch's and every variant's calls run by run, so noise on a shared machine hits all rows alike. For calls of milliseconds or more: sub-millisecond calls pay for waking threads on every switch.",
    ),
    record: bool = typer.Option(
        True,
        help="Record batch-1 latencies in the bundle so load() defaults to the fastest passing variant on this CPU.",
    ),
    max_new_tokens: int = typer.Option(20, min=1, help="Caption bundles: new tokens per caption in the generate rows."),
    num_beams: int = typer.Option(
        1, min=1, max=16, help="Caption bundles: beam width in the generate rows (1 = greedy)."
    ),
    json_path: JsonReport = None,
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG plot of latency and speedup."),
    plan_only: bool = typer.Option(
        False,
        "--plan",
        "--dry-run",
        help="Print what would run (task x runner x batch, and what is skipped and why), then stop: loads no model, times and records nothing. With --json, writes the plan.",
    ),
    no_wait: bool = _NO_WAIT,
):
    """Benchmark every variant of a bundle against PyTorch: latency, throughput, fidelity."""
    from .benchmarks.bench import BenchConfig
    from .benchmarks.bench import bench as run_bench
    from .benchmarks.report import accuracy_table, table, write_json
    from .benchmarks.report import plot as write_plot
    from .runtimes.backends import backend_names
    from .runtimes.session import PRECISIONS, parse_list, parse_sizes

    batches = parse_sizes(batch, "--batch")
    if data is not None and not data.strip():
        from .errors import InputError

        raise InputError("--data is empty: give 'photos', 'shapes', an image folder or a text file")
    _output_file(json_path, "--json")
    _output_file(plot, "--plot")
    cfg = BenchConfig(
        backends=parse_list(backend, backend_names(), "backend") or None,
        precisions=parse_list(precision, PRECISIONS, "precision") or None,
        batches=batches,
        runs=runs,
        warmup=warmup,
        threads=threads,
        data=data,
        pytorch=not no_pytorch,
        record=record,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        interleave=interleave,
    )
    if plan_only:
        from .benchmarks.bench import plan_bench
        from .benchmarks.report import plan_table

        bench_plan = plan_bench(str(bundle), cfg)
        _console().print(plan_table(bench_plan))
        if json_path:
            write_json(bench_plan.to_dict(), json_path)
        return
    with _progress() as progress:
        report = run_bench(str(bundle), cfg, log=_log, progress=progress)
    if report["results"]:
        _console().print(table(report))
    if report.get("chat"):  # a chat bundle: one table of conversation timings
        from .benchmarks.chat_bench import chat_table

        _console().print(chat_table(report))
    if any(r["component"] == "generate" for r in report["results"]):  # a generative bundle's rows
        from .benchmarks.bench import caption_table

        _console().print(caption_table(report))
    if (acc := accuracy_table(report)) is not None:
        _console().print(acc)
    from .runtimes.bundle import Bundle

    if searched := Bundle.open(bundle).manifest.get("compress"):  # a `compress` output: its candidates and front
        from .runtimes.bundle_info import compress_table

        _console().print(compress_table(searched))
    if json_path:
        write_json(report, json_path)
        _log(f"JSON report written to {json_path}")
    if plot:
        write_plot(report, plot)
        _log(f"plot written to {plot}")


@app.command()
@user_errors
def quantize(
    bundle: Path = typer.Argument(..., help="Bundle directory (gets the new variant; the rest is kept)."),
    precision: str = typer.Option(
        ..., help="int8, fp16 or bf16; int4 for caption bundles (onnxruntime: int4 decoder, int8 encoder)."
    ),
    backend: str = typer.Option(
        "onnxruntime", help="onnxruntime (Q/DQ or dynamic INT8, fp16) or openvino (NNCF INT8, bf16, fp16)."
    ),
    mode: str | None = typer.Option(
        None,
        help="INT8 on onnxruntime: static (calibrated Q/DQ, the default) or dynamic (no data). best (onnxruntime or openvino, encoder bundles): build every candidate recipe, time each on this CPU beside fp32, keep the fastest that passes its gate (the manifest records all).",
    ),
    calib: str | None = typer.Option(
        None, help="Calibration data: an image folder, a text file (one caption a line), 'shapes' or 'photos'."
    ),
    method: str = typer.Option("minmax", help="Calibration method: minmax, entropy or percentile."),
    samples: int | None = typer.Option(
        None, help="Calibration samples per component (default 32; chat bundles: 12 vision tiles)."
    ),
    exclude: str | None = typer.Option(
        None,
        help="Comma-separated op types (e.g. Gemm) or node-name globs/regexes to keep in float; default for static INT8: the MLP down-projections (measured outliers); 'none' quantizes everything.",
    ),
    min_cosine: float | None = typer.Option(
        None, help="Accuracy-aware: keep the most sensitive layers in float until cosine vs fp32 reaches this."
    ),
    min_agreement: float = typer.Option(
        0.8,
        help="Generative bundles (caption, VQA, chat): the share of fp32's greedy tokens on held-out photos the variant must reproduce to pass its gate.",
    ),
    component: str | None = typer.Option(None, help="Only these components (comma-separated); default all."),
    threads: Threads = None,
    no_wait: bool = _NO_WAIT,
):
    """Add a quantized variant to a bundle, with its fidelity vs fp32 on held-out inputs.

    Caption bundles need no data: INT8 is dynamic (onnxruntime) or weight-only (openvino), int4 is
    weight-only for the decoder (onnxruntime); fp16 and openvino bf16 convert the fp32 graphs.
    Chat bundles likewise, except the vision tower's openvino INT8: static NNCF, calibrated on tiles
    of the built-in calibration photos (or --calib's images)."""
    from .exporter.quantize import QuantConfig
    from .exporter.quantize import quantize as run_quantize
    from .runtimes.session import parse_list

    _check_data(calib, "--calib")
    cfg = QuantConfig(
        precision=precision,
        backend=backend,
        mode=mode or "static",
        mode_given=mode is not None,
        calib=calib,
        method=method,
        samples=samples,
        exclude=None if exclude is None else _exclusions(exclude),
        min_cosine=min_cosine,
        min_agreement=min_agreement,
        components=parse_list(component, None, "component") or None,
        threads=threads,
    )
    _print_info(run_quantize(bundle, cfg, log=_log))


@app.command()
@user_errors
def serve(
    bundles: list[str] = typer.Argument(
        ..., help="Bundle folders to serve; the model name is the folder name, or NAME=PATH."
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind (loopback by default; use an API key on anything else)."
    ),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="MMDEPLOY_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or env MMDEPLOY_API_KEY).",
    ),
    max_batch: int = typer.Option(32, min=1, help="Most items per inference batch."),
    max_wait_ms: float = typer.Option(
        5.0, min=0, help="Longest a batch waits for more requests (only while more are arriving)."
    ),
    max_queue: int = typer.Option(1024, min=1, help="Items queued per model component before 503 + Retry-After."),
    max_items: int = typer.Option(256, min=1, help="Inputs / images per request."),
    max_body_mb: float = typer.Option(32.0, min=0.001, help="Largest request body (MB)."),
    max_pixels: int = typer.Option(20_000_000, min=1, help="Largest image (pixels), checked before decoding."),
    timeout: float = typer.Option(60.0, min=0.001, help="Per-request timeout (seconds)."),
    header_timeout: float = typer.Option(
        10.0,
        min=0.001,
        help="A client must send its request headers within this (seconds), else 408 and the socket is closed.",
    ),
    body_timeout: float = typer.Option(30.0, min=0.001, help="... and its body within this after them (seconds)."),
    drain_timeout: float = typer.Option(
        30.0,
        min=0.001,
        help="On SIGTERM: how long in-flight requests may take to finish (seconds); /health says 'draining' meanwhile.",
    ),
    threads: ServeThreads = None,
    backend: str | None = typer.Option(None, help="Backend (default: each bundle's default variant)."),
    precision: str | None = typer.Option(None, help="Precision (default: each bundle's default variant)."),
    allow_local_paths: bool = typer.Option(
        False, "--allow-local-paths", help="Also accept image paths on this machine (trusted clients only)."
    ),
    chat_cache_mb: float = typer.Option(
        512.0,
        min=0,
        help="Chat models: MB of recent conversations' KV caches kept, so a request that continues one prefills only its new turn (0: none).",
    ),
    log_level: str = typer.Option("info", help="debug, info, warning or error (JSON lines on stderr)."),
):
    """Serve bundles over HTTP: a playground page at /, API docs at /docs, OpenAI-compatible /v1/embeddings,
    /v1/classify, /v1/caption (stream: true for server-sent events), /v1/chat/completions (VQA and VLM bundles), /health, /metrics."""
    from .errors import InputError
    from .runtimes.serve import ServeConfig, run_server

    if not 1 <= port <= 65535:  # uvicorn would bind port % 65536 without a word
        raise InputError(f"--port {port}: must be between 1 and 65535")
    if log_level not in ("debug", "info", "warning", "error"):
        raise InputError(f"--log-level {log_level!r}: choose from debug, info, warning, error")

    cfg = ServeConfig(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_items=max_items,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pixels=max_pixels,
        timeout_s=timeout,
        api_key=api_key or None,
        allow_local_paths=allow_local_paths,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        drain_timeout_s=drain_timeout,
        chat_cache_mb=chat_cache_mb,
    )
    run_server(
        bundles,
        host=host,
        port=port,
        config=cfg,
        backend=backend,
        precision=precision,
        threads=threads,
        log_level=log_level,
    )


@app.command("bench-serve")
@user_errors
def bench_serve(
    bundle: str | None = typer.Argument(
        None, help="Bundle to serve (a server is started on a free 127.0.0.1 port); or give --url."
    ),
    url: str | None = typer.Option(None, help="A running server on this machine, e.g. http://127.0.0.1:8000."),
    model: str | None = typer.Option(None, help="Model name (default: the first served)."),
    kind: str = typer.Option("image", help="image or text embeddings."),
    concurrency: str = typer.Option("1,16", help="Comma-separated numbers of concurrent clients."),
    requests: int = typer.Option(2000, min=1, help="Requests per level."),
    duration: float = typer.Option(60.0, min=0.1, help="Seconds per level at most."),
    warmup: int = typer.Option(50, min=0, help="Untimed requests before each level."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="MMDEPLOY_API_KEY", help="API key of the server."),
    json_path: JsonReport = None,
    model_ceiling: bool = typer.Option(
        True,
        "--model-ceiling/--no-model-ceiling",
        help="With a bundle: after each level run the served variant alone here at the server's mean batch, "
        "to report the fraction of the model's items/s reached and the server's CPU beyond the model's.",
    ),
):
    """Load-test `mmdeploy serve` on this machine: throughput and p50/p99 per concurrency level, and how
    close the server comes to the model alone."""
    from .benchmarks.loadgen import format_report, parse_levels, run_loadgen

    _output_file(json_path, "--json")
    if bundle is not None and "=" not in bundle:  # a bundle that cannot answer embeddings fails every request
        from .common.capabilities import Capability
        from .errors import InputError
        from .runtimes.bundle import Bundle
        from .runtimes.pipelines import pipeline_class

        if kind not in ("image", "text"):
            raise InputError(f"--kind {kind!r}: choose image or text")
        b = Bundle.open(bundle)
        cap = Capability.EMBED_IMAGES if kind == "image" else Capability.EMBED_TEXTS
        if not (pipe_cls := pipeline_class(b.family, str(b.root))).can(cap):
            raise pipe_cls.cannot(cap, f"bench-serve --kind {kind} (it loads /v1/embeddings)", b.root)
    rep = run_loadgen(
        bundle,
        url=url,
        model=model,
        kind=kind,
        concurrency=parse_levels(concurrency),
        requests=requests,
        duration_s=duration,
        warmup=warmup,
        api_key=api_key,
        model_ceiling=model_ceiling,
        log=_log,
    )
    print(format_report(rep))
    if json_path:
        json_path.write_text(json.dumps(rep.to_dict(), indent=2))
        _log(f"JSON report written to {json_path}")


def _print_info(b) -> None:
    from .runtimes.bundle_info import render_info

    c = _console()
    for part in render_info(b):
        c.print(part)


@app.command()
@user_errors
def info(
    bundle: BundleDir,
    verify: bool = typer.Option(
        True,
        help="Hash every file and check it against its sha256 (load() skips files unchanged since they last hashed correctly).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
):
    """Show a bundle: source, components, variants with their parity, the default variant."""
    from .runtimes.bundle import Bundle

    b = Bundle.open(bundle)
    if verify:
        b.verify_all(full=True)
    if as_json:
        print(json.dumps(b.manifest, indent=2))
    else:
        _print_info(b)


def _run_job(bundle: Path, out: Path, job: JobFlags, **kw) -> None:
    """A batch job (jobs/runner.py): progress on stderr, the summary's key figures on stdout."""
    from .jobs.runner import run_job

    s = run_job(bundle, out, log=_log, **job.as_kwargs(), **kw)
    r = s["this_run"]
    rate = f", {r['items_per_s']:,.1f} items/s" if r["items_per_s"] else ""
    print(
        f"{out}: {s['rows']:,} rows in {s['shards']['done']} shards, {s['broken']} broken, "
        f"{s['skipped_not_images']} skipped (not images) - this run {r['items']:,} items in {r['seconds']:.1f} s{rate}"
    )
    if s["broken"]:
        print(f"broken inputs and why: {out / '_job.json'} (shards.*.broken)")


@app.command()
@user_errors
@job_flags
def embed(
    bundle: Path = typer.Argument(..., help="Bundle directory (one with an image and/or a text encoder)."),
    image: list[Path] = typer.Option([], "--image", help="Image file to embed (repeatable)."),
    text: list[str] = typer.Option([], "--text", help="Text to embed (repeatable)."),
    backend: Backend = None,
    precision: Precision = None,
    threads: Threads = None,
    full: bool = typer.Option(False, "--full", help="Print whole vectors as JSON instead of a summary."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='One JSON object: {"images": [{"path", "embedding"}], "texts": [{"text", "embedding"}]} (as mmrt embed --json).',
    ),
    images: list[str] = typer.Option(
        [],
        "--images",
        help='Batch job: a glob ("photos/**/*.jpg", ** recurses) or a folder (repeatable); needs --out.',
        rich_help_panel=JOB_PANEL,
    ),
    texts: list[Path] = typer.Option(
        [],
        "--texts",
        help="Batch job: a text file, one item per line (repeatable); needs --out.",
        rich_help_panel=JOB_PANEL,
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Batch job: folder for the Parquet shards, _job.json and _summary.json.",
        rich_help_panel=JOB_PANEL,
    ),
    job: JobFlags = JobFlags(),  # the eight batch-job flags, see cli_options.job_flags
    no_wait: bool = _NO_WAIT,
):
    """Embed images and/or texts (L2-normalised); with both, print their cosine similarities.

    With --images/--texts and --out: a batch job over whole folders into Parquet shards
    (resumable with --resume; on Ray with --ray local|ADDRESS)."""
    from .errors import InputError
    from .runtimes import load

    if images or texts or out is not None:
        if image or text:
            raise InputError(
                "--image/--text embed a few items and print them; --images/--texts with --out run a batch job: use one form"
            )
        if out is None:
            raise InputError("--images/--texts need --out DIR (the folder the Parquet shards go to)")
        return _run_job(
            bundle,
            out,
            job,
            images=images,
            texts=[str(t) for t in texts],
            backend=backend,
            precision=precision,
            threads=threads,
        )
    if not image and not text:
        raise InputError("give --image PATH and/or --text STR (or --images GLOB / --texts FILE with --out DIR)")
    from .common.capabilities import Capability

    pipe = load(bundle, backend=backend, precision=precision, threads=threads)
    if image:
        pipe.require(Capability.EMBED_IMAGES, "embed --image")
    if text:
        pipe.require(Capability.EMBED_TEXTS, "embed --text")
    if as_json:  # a list per kind (a path or text given twice stays twice), the shape mmrt prints
        doc = {}
        if image:
            vecs = pipe.embed_images([str(p) for p in image])
            doc["images"] = [{"path": str(p), "embedding": v.tolist()} for p, v in zip(image, vecs)]
        if text:
            doc["texts"] = [{"text": t, "embedding": v.tolist()} for t, v in zip(text, pipe.embed_texts(text))]
        print(json.dumps(doc))
        return
    out = {}
    if image:
        out["images"] = dict(zip(map(str, image), pipe.embed_images([str(p) for p in image])))
    if text:
        out["texts"] = dict(zip(text, pipe.embed_texts(text)))
    if full:
        print(json.dumps({k: {n: v.tolist() for n, v in d.items()} for k, d in out.items()}))
        return
    print(f"variant: {pipe.variant}")
    for kind, d in out.items():
        for name, v in d.items():
            print(f"{kind[:-1]} {name!r}: dim {v.shape[0]}, [{', '.join(f'{x:.4f}' for x in v[:4])}, ...]")
    if image and text:
        print("cosine similarity (rows: images, columns: texts)")
        for name, v in out["images"].items():
            sims = "  ".join(f"{float(v @ t):+.4f}" for t in out["texts"].values())
            print(f"  {name}: {sims}")


@app.command()
@user_errors
def classify(
    bundle: Path = typer.Argument(..., help="Bundle directory of a dual encoder (image and text towers)."),
    image: Path = typer.Argument(..., help="Image file."),
    labels: str = typer.Option(..., "--labels", help='Comma-separated labels, e.g. "a cat,a dog,a car".'),
    template: str = typer.Option("{}", help='Prompt template, e.g. "a photo of {}".'),
    backend: Backend = None,
    precision: Precision = None,
    threads: Threads = None,
    top: int = typer.Option(5, min=1, help="How many labels to print."),
    as_json: bool = typer.Option(
        False, "--json", help='One JSON object: {"labels": [{"label", "score"}]}, every label, best first.'
    ),
):
    """Zero-shot classification of one image over the given labels."""
    from .common.capabilities import Capability
    from .runtimes import load

    pipe = load(bundle, backend=backend, precision=precision, threads=threads)
    pipe.require(Capability.CLASSIFY, "classify")
    from .runtimes.session import parse_list

    ranked = pipe.classify(str(image), parse_list(labels, None, "labels"), template=template)
    if as_json:
        print(json.dumps({"labels": [{"label": label, "score": p} for label, p in ranked]}))
        return
    for label, p in ranked[:top]:
        print(f"{p:7.2%}  {label}")


@app.command()
@user_errors
@job_flags
def caption(
    bundle: Path = typer.Argument(..., help="Caption bundle directory."),
    image: list[Path] | None = typer.Argument(None, help="Image files to caption."),
    max_new_tokens: int | None = typer.Option(
        None, help="New tokens per caption (default: the checkpoint's generation config)."
    ),
    num_beams: NumBeams = None,
    prompt: str | None = typer.Option(None, help='Text the caption continues, e.g. "a picture of" (BLIP, GIT).'),
    backend: Backend = None,
    precision: Precision = None,
    threads: Threads = None,
    as_json: bool = typer.Option(
        False, "--json", help='One JSON object: {"captions": [{"path", "text"}]}, the shape mmrt prints.'
    ),
    images: list[str] = typer.Option(
        [],
        "--images",
        help='Batch job: a glob ("photos/**/*", ** recurses) or a folder (repeatable); needs --out.',
        rich_help_panel=JOB_PANEL,
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Batch job: folder for the Parquet shards (path, caption), _job.json and _summary.json.",
        rich_help_panel=JOB_PANEL,
    ),
    job: JobFlags = JobFlags(),  # the eight batch-job flags, see cli_options.job_flags
    no_wait: bool = _NO_WAIT,
):
    """Caption images with a captioning bundle (greedy or beam search), one line per image.

    With --images and --out: a batch job over whole folders into Parquet shards (resumable)."""
    from .errors import InputError
    from .runtimes import load

    if images or out is not None:
        if image:
            raise InputError(
                "IMAGE arguments caption a few files and print them; --images with --out runs a batch job: use one form"
            )
        if out is None:
            raise InputError("--images needs --out DIR (the folder the Parquet shards go to)")
        if not images:
            raise InputError("--out needs --images GLOB (what to caption)")
        options = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "prompt": prompt}
        return _run_job(
            bundle,
            out,
            job,
            images=images,
            caption=True,
            backend=backend,
            precision=precision,
            threads=threads,
            options={k: v for k, v in options.items() if v is not None},
        )
    if not image:
        raise InputError("give IMAGE files (or --images GLOB with --out DIR)")
    from .common.capabilities import Capability

    pipe = load(bundle, backend=backend, precision=precision, threads=threads)
    pipe.require(Capability.CAPTION, "caption")
    caps = pipe.caption([str(p) for p in image], max_new_tokens=max_new_tokens, num_beams=num_beams, prompt=prompt)
    if as_json:
        print(json.dumps({"captions": [{"path": str(path), "text": text} for path, text in zip(image, caps)]}))
        return
    for path, text in zip(image, caps):
        print(f"{path}\t{text}")


@app.command()
@user_errors
def vqa(
    bundle: Path = typer.Argument(..., help="VQA bundle directory (e.g. from `mmdeploy export blip-vqa-base`)."),
    image: list[Path] = typer.Argument(..., help="Image files; one question is asked of each."),
    question: list[str] = typer.Option(
        ..., "--question", "-q", help="The question (repeat for several questions about one image)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, help="New tokens per answer (default: the checkpoint's generation config)."
    ),
    num_beams: NumBeams = None,
    backend: Backend = None,
    precision: Precision = None,
    threads: Threads = None,
    as_json: bool = typer.Option(
        False, "--json", help='One JSON object: {"answers": [{"path", "question", "answer"}]}, the shape mmrt prints.'
    ),
):
    """Answer questions about images with a VQA bundle: one line per (image, question), tab-separated."""
    from .common.capabilities import Capability
    from .runtimes import load

    pipe = load(bundle, backend=backend, precision=precision, threads=threads)
    pipe.require(Capability.ANSWER, "vqa")
    paths = [str(p) for p in image]
    answers = pipe.answer(paths, list(question), max_new_tokens=max_new_tokens, num_beams=num_beams)
    pairs = zip(
        paths * len(question) if len(paths) == 1 else paths, question * len(paths) if len(question) == 1 else question
    )
    if as_json:
        rows = [{"path": path, "question": q, "answer": text} for (path, q), text in zip(pairs, answers)]
        print(json.dumps({"answers": rows}))
        return
    for (path, q), text in zip(pairs, answers):
        print(f"{path}\t{q}\t{text}")


@app.command()
@user_errors
def chat(
    bundle: Path = typer.Argument(..., help="VLM bundle directory (e.g. from `mmdeploy export smolvlm-256m`)."),
    image: list[Path] = typer.Option([], "--image", "-i", help="Image for the first turn (repeatable)."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="One turn and exit (default: interactive)."),
    max_new_tokens: int | None = typer.Option(None, min=1, help="New tokens per answer (default 128)."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy; > 0 samples."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature > 0)."),
    seed: int | None = typer.Option(None, help="Seed for sampling (same seed, same answer)."),
    system: str | None = typer.Option(None, help="A system message."),
    image_splitting: bool | None = typer.Option(
        None,
        "--image-splitting/--no-image-splitting",
        help="Cut each image into tiles plus a global view, as the checkpoint's processor does (default: the "
        "bundle's setting); off: one tile per image, far fewer prompt tokens, less detail.",
    ),
    backend: Backend = None,
    precision: Precision = None,
    threads: Threads = None,
):
    """Chat about images with a VLM bundle: multi-turn, the KV cache kept between turns (a turn prefills
    only its new tokens), tokens printed as they come. Interactive: `/image PATH` attaches an image to
    the next turn, `/reset` starts over, Ctrl-D quits."""
    from .common.capabilities import Capability
    from .runtimes import load
    from .runtimes.chat_repl import chat_repl

    pipe = load(bundle, backend=backend, precision=precision, threads=threads)
    pipe.require(Capability.CHAT, "chat")
    if image_splitting is not None:
        pipe.image_splitting = image_splitting
    chat_repl(
        pipe.chat(system=system),
        images=[str(p) for p in image],
        prompt=prompt,
        err=_err_console(),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )


@app.command()
@user_errors
def build(
    bundle: BundleDir,
    backend: str = typer.Option(
        ..., help="tensorrt (plans for this GPU, from the bundle's ONNX and build settings) or openvino."
    ),
    precision: str | None = typer.Option(
        None, help="Comma-separated precisions (default: the bundle's TensorRT settings, or fp32)."
    ),
    dla_core: int | None = typer.Option(None, help="Jetson Orin: build for this DLA core (GPU fallback on)."),
    threads: Threads = None,
    no_wait: bool = _NO_WAIT,
):
    """Build engines on the machine that runs them (TensorRT plans are GPU- and version-specific)."""
    from .runtimes.build import build as run_build
    from .runtimes.session import PRECISIONS, parse_list

    b = run_build(bundle, backend, parse_list(precision, PRECISIONS, "precision") or None, dla_core, threads, log=_log)
    _print_info(b)


def _run_resumable(run, teacher, output, cfg, state: Path, *, saved: str, nothing_saved: str, random_weights, resume):
    """distill/prune under a progress bar; Ctrl-C exits 130 saying whether `state` lets --resume continue."""
    try:
        with _progress(remaining=True) as progress:
            return run(teacher, output, cfg, random_weights=random_weights, resume=resume, log=_log, progress=progress)
    except KeyboardInterrupt:
        where = f"{saved} is in {state}: rerun with --resume" if state.is_dir() else nothing_saved
        print(f"interrupted: {output} was not written; {where}", file=sys.stderr)
        raise typer.Exit(130) from None


@app.command()
@user_errors
def distill(
    teacher: str = typer.Argument(
        ..., help="Teacher: models.yaml name or a local Hugging Face checkpoint folder (CLIP, ViT-GPT2)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Student checkpoint folder to write (appears only when complete)."
    ),
    vision_layers: int | None = typer.Option(
        None, help="Student vision-tower / image-encoder layers (default: the teacher's)."
    ),
    text_layers: int | None = typer.Option(
        None, help="Student text-tower (CLIP) or decoder (captioner) layers (default: the teacher's)."
    ),
    mlp_ratio: float | None = typer.Option(None, help="Student MLP width as a fraction of the teacher's, e.g. 0.5."),
    data: str = typer.Option(
        "shapes",
        help="Unlabelled training images: 'shapes', 'photos' or an image folder (captions.tsv pairs texts with images).",
    ),
    texts: str | None = typer.Option(None, help="Extra texts for the text tower: a text file, one per line."),
    samples: int | None = typer.Option(
        None, min=2, help="Training images per epoch (default: 24576 of shapes, all of a folder)."
    ),
    epochs: int = typer.Option(3, min=0, help="Passes over the images (0 writes the initialised student)."),
    batch_size: int = typer.Option(64, min=2),
    lr: float = typer.Option(1e-3, help="Peak learning rate (warm-up, then cosine decay)."),
    seed: int = typer.Option(0),
    threads: TorchThreads = None,
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    train_all: bool = typer.Option(
        False, "--train-all", help="Also train towers the student keeps whole (frozen copies by default)."
    ),
    eval_images: EvalImages = 500,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last finished epoch."),
    random_weights: bool = typer.Option(
        False, "--random-weights", help="Teacher = the models.yaml shape twin (speed work)."
    ),
):
    """Distil a teacher into a smaller student of the same HF class (fewer layers), ready for `export`."""
    from .exporter.distill import DistillConfig
    from .exporter.distill import distill as run_distill

    cfg = DistillConfig(
        vision_layers=vision_layers,
        text_layers=text_layers,
        mlp_ratio=mlp_ratio,
        data=data,
        texts=texts,
        samples=samples,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
        device=device,
        train_all=train_all,
        eval_images=eval_images,
    )
    report = _run_resumable(
        run_distill,
        teacher,
        output,
        cfg,
        output.parent / f"{output.name}.distill-state",
        saved="state of the last finished epoch",
        nothing_saved="no epoch had finished",
        random_weights=random_weights,
        resume=resume,
    )
    s, f = report["student"], report["fidelity"]
    print(f"{output}: {s['parameters'] / 1e6:.2f}M parameters ({s['ratio']:.0%} of the teacher)")
    for k, v in {**f, **report["speed"]}.items():
        print(f"  {k}: {v}")


@app.command()
@user_errors
def prune(
    teacher: str = typer.Argument(
        ..., help="Teacher: models.yaml name or a local Hugging Face checkpoint folder (CLIP, SigLIP, ViT-GPT2, BERT)."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Pruned checkpoint folder to write (appears only when complete)."
    ),
    heads: float | None = typer.Option(
        None,
        help="Fraction of attention heads KEPT per layer, in (0, 1): 0.5 keeps half (CLIP: the hidden width "
        "shrinks with them; ViT encoders keep it). Default: all kept.",
    ),
    mlp: float | None = typer.Option(
        None, help="Fraction of MLP channels KEPT per layer, in (0, 1): 0.5 keeps half. Default: all kept."
    ),
    towers: str | None = typer.Option(
        None, help="Towers to prune, comma-separated: vision, text (default: all the family's pruner knows)."
    ),
    importance: str = typer.Option(
        "activation", help="Ranking: activation (calibration batches), weight (norms only) or random (a baseline)."
    ),
    data: str = typer.Option(
        "shapes",
        help="Calibration and recovery data: 'shapes', 'photos' or an image folder (captions.tsv pairs texts); "
        "text embeddings also take a text file (one text per line) or 'sentences', and fit the pruned model "
        "to those texts.",
    ),
    calib_samples: int = typer.Option(128, min=1, help="Calibration samples the importance is measured on."),
    epochs: int | None = typer.Option(
        None,
        min=0,
        help="Recovery: passes of distillation from the teacher over --samples (0: prune only). Default: 16 when "
        "the hidden width is cut (CLIP --heads), else 8.",
    ),
    samples: int | None = typer.Option(16384, min=2, help="Recovery images per epoch."),
    batch_size: int = typer.Option(64, min=2),
    lr: float | None = typer.Option(
        None,
        help="Peak recovery learning rate (warm-up, then cosine decay). Default: 3e-3 when the hidden width "
        "is cut (CLIP --heads), else 1e-3.",
    ),
    seed: int = typer.Option(0),
    threads: TorchThreads = None,
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    eval_images: EvalImages = 500,
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted recovery from its last finished epoch."
    ),
    random_weights: bool = typer.Option(
        False, "--random-weights", help="Teacher = the models.yaml shape twin (speed work)."
    ),
    no_wait: bool = _NO_WAIT,
):
    """Remove the least important attention heads and MLP channels (ratios = fractions KEPT), then recover by distillation."""
    from .exporter.prune import STATE_DIR_SUFFIX, PruneConfig
    from .exporter.prune import prune as run_prune

    cfg = PruneConfig(
        heads=heads,
        mlp=mlp,
        towers=tuple(t.strip() for t in towers.split(",") if t.strip()) if towers else None,
        method=importance,
        data=data,
        calib_samples=calib_samples,
        samples=samples,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
        device=device,
        eval_images=eval_images,
    )
    report = _run_resumable(
        run_prune,
        teacher,
        output,
        cfg,
        output.parent / f"{output.name}{STATE_DIR_SUFFIX}",
        saved="its state",
        nothing_saved="no recovery epoch had finished",
        random_weights=random_weights,
        resume=resume,
    )
    s = report["student"]
    print(f"{output}: {s['parameters'] / 1e6:.2f}M parameters ({s['ratio']:.0%} of the teacher)")
    for name, t in s["towers"].items():
        print(
            f"  {name}: heads {t['heads']}/{t['teacher_heads']}, hidden {t['hidden']}/{t['teacher_hidden']}, MLP {t['mlp']}/{t['teacher_mlp']}"
        )
    for k, v in report["fidelity"].items():
        print(f"  {k}: {v}")


def _fractions(value: str, flag: str) -> tuple[float, ...]:
    from .errors import InputError

    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"{flag} {value!r}: give comma-separated fractions, e.g. 1,0.5") from None


@app.command()
@user_errors
def compress(
    teacher: str = typer.Argument(..., help="Teacher: models.yaml name or a local Hugging Face checkpoint folder."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Bundle to write: the chosen student's, its default variant the pick."
    ),
    data: str = typer.Option(
        "shapes",
        help="Labelled images: training data for the students and held-out images for top-1 ('shapes', or a folder with labels.tsv).",
    ),
    max_drop: float = typer.Option(
        1.0, help="Accuracy floor: zero-shot top-1 points the pick may lose against the teacher's fp32."
    ),
    budget_ms: float | None = typer.Option(
        None, help="Latency budget: batch-1 ms (summed over components) the pick must run within."
    ),
    budget_min: float | None = typer.Option(
        None, help="Wall-clock minutes for the search: the costliest students are left out to fit, or it refuses."
    ),
    depth: str = typer.Option("1,0.5", help="Shares of the image tower's layers kept (1: the teacher's)."),
    width: str = typer.Option("1,0.5,0.25", help="MLP width ratios (1: the teacher's)."),
    heads: str = typer.Option(
        "1,0.5",
        help="Shares of the image tower's attention heads kept (CLIP: its residual width goes with them), each "
        "one student at full depth and the narrowest --width, recovered with prune's 4096 steps; 1 alone: no such student.",
    ),
    precision: str = typer.Option("fp32,int8", help="Precisions of every student (INT8 calibrated on --data)."),
    backend: str = typer.Option("onnxruntime,openvino", help="Backends of every student."),
    epochs: int = typer.Option(
        2, min=1, help="Recovery training of each depth / MLP student, in passes over --samples."
    ),
    heads_epochs: int | None = typer.Option(
        None,
        min=1,
        help="Recovery of the heads students in passes over --samples. Default: prune's for a cut residual "
        "(16 passes over 16384 images).",
    ),
    samples: int = typer.Option(8192, min=2, help="Training images per epoch."),
    batch_size: int = typer.Option(64, min=2),
    eval_images: EvalImages = 500,
    timing_seconds: float = typer.Option(
        2.0, min=0.1, help="Timing per candidate and component, in the one tournament of all candidates."
    ),
    threads: Threads = None,
    random_weights: bool = typer.Option(
        False, "--random-weights", help="Teacher = the models.yaml shape twin (speed work; top-1 is meaningless)."
    ),
    no_wait: bool = _NO_WAIT,
):
    """Search layers kept x width (x heads) x precision x backend; keep the fastest variant within --max-drop, here."""
    from .exporter.compress import CompressConfig
    from .exporter.compress import compress as run_compress
    from .runtimes.bundle_info import compress_table
    from .runtimes.session import parse_list

    cfg = CompressConfig(
        data=data,
        max_drop=max_drop,
        budget_ms=budget_ms,
        budget_min=budget_min,
        depths=_fractions(depth, "--depth"),
        widths=_fractions(width, "--width"),
        heads=_fractions(heads, "--heads"),
        precisions=tuple(parse_list(precision, None, "precision")),
        backends=tuple(parse_list(backend, None, "backend")),
        epochs=epochs,
        heads_epochs=heads_epochs,
        samples=samples,
        batch_size=batch_size,
        eval_images=eval_images,
        timing_seconds=timing_seconds,
        threads=threads,
    )
    with _progress(remaining=True) as progress:
        record = run_compress(teacher, output, cfg, random_weights=random_weights, log=_log, progress=progress)
    _console().print(compress_table(record))
    print(
        f"{output}: default variant {record['default']['backend']}/{record['default']['precision']} ({record['chosen']})"
    )


@app.command()
@user_errors
def search(
    folder: Path = typer.Argument(..., help="Folder of an embedding job (`mmdeploy embed ... --out FOLDER`)."),
    text: str | None = typer.Option(None, "--text", help="Query text (embedded with the job's bundle and variant)."),
    image: Path | None = typer.Option(
        None, "--image", help="Query image (embedded with the job's bundle and variant)."
    ),
    k: int = typer.Option(10, "-k", help="How many results."),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Bundle to embed the query with (default: the job's; must hold the same weights)."
    ),
    exact: bool = typer.Option(False, "--exact", help="Exact numpy search even when a FAISS index is built."),
    threads: Threads = None,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON lines."),
):
    """Top-k items of an embedding job for a text or image query: score, then path (or text).

    Exact cosine search over the shards (memory-mapped, chunked), or the FAISS index that
    `mmdeploy index` built, when it is up to date."""
    from .jobs.search import search as run_search

    hits = run_search(
        folder,
        text=text,
        image=str(image) if image else None,
        k=k,
        bundle=bundle,
        exact=exact,
        threads=threads,
        log=_log,
    )
    for h in hits:
        if as_json:
            print(json.dumps(h))
        else:
            print(f"{h['score']:.4f}\t{h.get('path', h.get('text'))}")


@app.command()
@user_errors
def index(
    folder: Path = typer.Argument(..., help="Folder of an embedding job."),
    kind: str = typer.Option(
        "ivf",
        "--kind",
        help="flat (exact, BLAS), ivf (k-means cells: fast build and queries), hnsw (graph: fastest queries, slowest build).",
    ),
    nlist: int | None = typer.Option(None, "--nlist", min=1, help="IVF cells (default: 4 x sqrt(rows))."),
    no_wait: bool = _NO_WAIT,
):
    r"""Build a FAISS index over an embedding job's shards (needs the \[search] extra); `search` uses it."""
    from .jobs.search import build_index

    build_index(folder, kind=kind, nlist=nlist, log=_log)


@app.command()
@user_errors
def doctor():
    """What this machine can run: CPU, GPU, backends and their devices, missing extras."""
    from .benchmarks.doctor import report

    for line in report():
        print(line)


def _click_exceptions():
    try:  # typer >= 0.2x vendors click as typer._click; older ones use click itself
        from typer._click import exceptions
    except ImportError:  # pragma: no cover
        from click import exceptions
    return exceptions


def main() -> None:
    """Usage errors (bad flags, missing arguments) are one line and exit 2, like every other error."""
    cx = _click_exceptions()
    _install_signal_handlers()
    try:
        rc = app(standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else str(exc))
        rc = 2
    except cx.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        print(f"error: {exc.format_message()}{where}", file=sys.stderr)
        rc = exc.exit_code
    except cx.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        rc = exc.exit_code
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
