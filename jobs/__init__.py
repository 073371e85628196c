"""Corpus-scale jobs: embed or caption thousands to millions of files into Parquet shards,
resumable, on this machine or on a Ray cluster; exact and indexed search over the shards.

    from mmdeploy.jobs import run_job, search
    run_job("out/clip", "emb/", images=["photos/**/*.jpg"])
    search("emb/", text="a red car", k=10)

Layout of a job folder (the same for the local and the Ray runner):

    _job.json           what the job is (task, bundle + its manifest's sha256, variant, the
                        inputs' count and fingerprint, shard size) and which shards finished,
                        with the broken items of each and why
    part-00000.parquet  one shard: `shard_size` consecutive inputs of the sorted input list,
                        written to a temporary name and renamed, so a shard exists whole or not
    _summary.json       totals and throughput of the last run
    _index/             an optional FAISS index (`mmdeploy index`)

The leading "_" makes Parquet readers skip the job files: ``pandas.read_parquet("emb/")``,
``pyarrow.parquet.read_table("emb/")`` and ``ray.data.read_parquet("emb/")`` read the shards.

Only numpy, pillow and pyarrow: no torch (Ray and FAISS are imported when asked for).
"""

from __future__ import annotations

from .runner import run_job
from .search import build_index, search

__all__ = ["build_index", "run_job", "search"]
