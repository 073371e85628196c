"""What one server holds while it runs: its models, the decode pool, counters, drain state."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics
from .model import ServedModel


class ServerState:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        self.arriving = 0  # inference requests read but not yet queued
        self.inflight = 0
        self.working = 0  # inference requests in flight (what a drain waits for; /health probes are not work)
        self.draining = False
        self.started = time.time()
        # image decoding + preprocessing: off the event loop, beside the inference threads
        self.decode_pool = ThreadPoolExecutor(
            max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="decode"
        )

    def arrivals(self) -> int:
        return self.arriving

    def arrived(self, state: dict | None) -> None:
        """The request reached its batcher (or left): it no longer counts as arriving."""
        if state is not None and state.get("arriving"):
            state["arriving"] = False
            self.arriving -= 1
            if self.arriving == 0:
                for m in self.models.values():
                    for b in m.batchers.values():
                        b.poke()

    def model(self, name: str | None) -> ServedModel:
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise ApiError(400, f"give 'model': one of {', '.join(self.models)}", code="missing_model", param="model")
        m = self.models.get(name)
        if m is None:
            raise ApiError(
                404,
                f"model {name!r} is not served here (served: {', '.join(self.models)})",
                code="model_not_found",
                param="model",
            )
        return m
