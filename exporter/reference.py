"""The PyTorch reference as a Session (bench and export parity compare against it)."""

from __future__ import annotations

import numpy as np

from ..errors import require

torch = require("torch", "export")


class TorchSession:
    def __init__(self, module, input_names: list[str], output_names: list[str], threads: int | None = None):
        self.module = module.eval()
        self.input_names, self.output_names = input_names, output_names
        if threads:
            torch.set_num_threads(threads)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names))
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {n: o.float().numpy() for n, o in zip(self.output_names, out)}
