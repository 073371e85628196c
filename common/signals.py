"""Process-wide signal hooks of the command line (cli.main installs them; `serve` puts uvicorn's
own drain handler over SIGTERM)."""

from __future__ import annotations

import os
import signal


def terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C: staging folders are removed, exit 130
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, terminate)  # `serve` installs uvicorn's own drain handler over it
    # A forked helper must die on SIGTERM, not unwind: NNCF's telemetry forks a sender that can sit
    # in getaddrinfo on an offline machine, and at exit multiprocessing terminates and joins it. With
    # our handler inherited the SIGTERM was swallowed and `export` hung at exit (seen in a test).
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
