"""What a bench runs: its settings (BenchConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchConfig:
    backends: list[str] | None = None
    precisions: list[str] | None = None
    batches: list[int] = field(default_factory=lambda: [1])
    runs: int = 20
    warmup: int = 3
    threads: int | None = None
    data: str | None = None  # None = real photos/captions; "shapes" or a folder later
    pytorch: bool = True
    record: bool = True  # write batch-1 latencies into the manifest so load() picks the fastest here
    max_new_tokens: int = 20  # caption bundles: the `generate` rows
    num_beams: int = 1
    interleave: bool = False  # encoder bundles: alternate every variant's calls run by run (noise hits all alike)
