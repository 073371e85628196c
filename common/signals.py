"""Process-wide signal hooks of the command line (cli.main installs them; `serve` puts uvicorn's
own drain handler over SIGTERM)."""

from __future__ import annotations

import os
import signal

_terminated = False


def terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C: staging folders are removed, exit 130
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


def check_terminated() -> None:
    """Raise the SIGTERM's KeyboardInterrupt again if it was lost: Python runs the handler between
    any two bytecodes, a finalizer's (``__del__``) too, and an exception raised in a finalizer is
    printed and dropped, or not even printed under a redirected stderr. An export once ran on to
    exit 0 after its SIGTERM; stage boundaries and a bundle's commit call this, so it stops there."""
    if _terminated:
        raise KeyboardInterrupt


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, terminate)  # `serve` installs uvicorn's own drain handler over it
    # A forked helper must die on SIGTERM, not unwind: NNCF's telemetry forks a sender that can sit
    # in getaddrinfo on an offline machine, and at exit multiprocessing terminates and joins it. With
    # our handler inherited the SIGTERM was swallowed and `export` hung at exit (seen in a test).
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
