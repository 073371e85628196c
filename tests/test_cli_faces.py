"""The pieces cli.py's commands delegate to: shared option types (cli_options.py), the chat
REPL (runtimes/chat_repl.py) and the bundle-info rendering (runtimes/bundle_info.py). No model runs."""

from __future__ import annotations

import pytest

from mmdeploy.cli_options import JOB_PANEL, JobFlags, job_flags
from mmdeploy.errors import InputError


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


class _Conv:
    def __init__(self):
        self.turns, self.resets = [], 0

    def send(self, text, images=(), stream=False, **kw):
        assert stream
        if text == "bad":
            raise InputError("bad turn")
        self.turns.append((text, list(images), kw))
        yield from ("an ", "answer")

    def reset(self):
        self.resets += 1


class _Err:
    def __init__(self):
        self.lines = []

    def print(self, msg, **kw):
        self.lines.append(msg)


def test_chat_repl_one_turn(capsys):
    from mmdeploy.runtimes.chat_repl import chat_repl

    conv, err = _Conv(), _Err()
    chat_repl(conv, images=["a.png"], prompt="hi", err=err, max_new_tokens=4)
    assert conv.turns == [("hi", ["a.png"], {"max_new_tokens": 4})]
    assert capsys.readouterr().out == "an answer\n" and not err.lines


def test_chat_repl_interactive(monkeypatch, capsys):
    from mmdeploy.runtimes.chat_repl import chat_repl

    lines = iter(["", "/image b.png", "bad", "look", "/reset", "again"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    conv, err = _Conv(), _Err()
    chat_repl(conv, images=["a.png"], prompt=None, err=err, seed=1)
    # the bad turn is reported and its images stay pending for the next one
    assert conv.turns == [("look", ["a.png", "b.png"], {"seed": 1}), ("again", [], {"seed": 1})]
    assert conv.resets == 1
    assert "/reset" in err.lines[0] and err.lines[1] == "error: bad turn"
    assert capsys.readouterr().out == "an answer\nan answer\n\n"


def test_fold_layers_groups_kv_cache_inputs():
    from mmdeploy.runtimes.bundle_info import fold_layers

    specs = [{"name": "ids", "shape": [1, "n"]}]
    specs += [{"name": f"past.{i}.{kv}", "shape": [1, 4, "p", 8]} for i in range(3) for kv in ("key", "value")]
    folded = fold_layers(specs)
    assert [s["name"] for s in folded] == ["ids", "past.{0..2}.key|value"]
    assert folded[1]["shape"] == [1, 4, "p", 8]
