"""The pieces cli.py's commands delegate to: shared option types (cli_options.py). No model runs."""

from __future__ import annotations

import pytest

from mmdeploy.cli_options import JOB_PANEL, JobFlags, job_flags


def _commands():
    typer_main = pytest.importorskip("typer.main")
    from mmdeploy.cli import app

    return typer_main.get_command(app).commands


def test_every_threads_option_has_the_same_range():
    seen = 0
    for name, cmd in _commands().items():
        for p in cmd.params:
            if p.name == "threads":
                seen += 1
                assert (p.min, p.max, p.default) == (1, 1024, None), name
                assert p.help and p.help.endswith("(default: all cores)."), name
    assert seen >= 12


@pytest.mark.parametrize("command", ["embed", "caption"])
def test_job_flags_are_options_of_the_batch_jobs_panel(command):
    cmd = _commands()[command]
    by_name = {p.name: p for p in cmd.params}
    flags = ["batch", "shard_size", "workers", "resume", "overwrite", "ray", "ray_actors", "ray_cpus"]
    assert list(JobFlags.__dataclass_fields__) == flags
    for f in flags:
        p = by_name[f]
        assert p.opts == ["--" + f.replace("_", "-")] and p.rich_help_panel == JOB_PANEL and p.help, f
        assert p.default == getattr(JobFlags(), f), f
    assert "job" not in by_name
    names = [p.name for p in cmd.params]  # in place of `job`, before --no-wait
    assert names[names.index("batch") : names.index("batch") + 8] == flags and names[-1] == "no_wait"


def test_job_flags_hands_the_command_one_jobflags():
    got = {}

    @job_flags
    def cmd(x: int = 0, job: JobFlags = JobFlags(), y: int = 1):
        got.update(x=x, job=job, y=y)

    cmd(x=2, batch=8, ray_cpus=0.5, resume=True, y=3)
    assert got == {"x": 2, "job": JobFlags(batch=8, ray_cpus=0.5, resume=True), "y": 3}
    assert got["job"].as_kwargs()["shard_size"] is None
    with pytest.raises(AssertionError, match="no `job: JobFlags`"):
        job_flags(lambda x=0: x)
