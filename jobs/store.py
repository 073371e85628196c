"""A job folder: _job.json (what the job is, which shards finished) and its Parquet shards.

Shard i holds inputs [i * shard_size, (i + 1) * shard_size) of the sorted input list, so a
resumed run (or another runner: local, Ray) recomputes exactly the shards that are missing and
no input can appear twice. A shard is written to ``.part-NNNNN.parquet.tmp`` and renamed; it
counts as finished only once _job.json lists it (written the same way), so a run killed between
the two leaves a shard that the next run rewrites.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..common.diskspace import disk_problem, resource_error
from ..common.locks import writer_lock
from ..errors import InputError, ResourceError, require

# leading "_": readers of a Parquet folder (pyarrow, pandas, Ray, Spark) skip these files
JOB, SUMMARY, INDEX_DIR = "_job.json", "_summary.json", "_index"
FORMAT, VERSION = "mmdeploy-job", 1
# what must match for --resume to continue a job rather than mix two different ones
RESUME_KEYS = ("task", "bundle_sha256", "variant", "shard_size", "options")


def shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, or Ctrl-C mid-write: no temporary file is left
        tmp.unlink(missing_ok=True)  # the old file stays whole
        if isinstance(exc, OSError):
            raise resource_error(exc, path.parent, f"writing {path} (the previous version is kept)") from None
        raise


def read_job(root: Path) -> dict[str, Any]:
    p = root / JOB
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{root}: no {JOB} here: not an mmdeploy job folder (make one with `mmdeploy embed --out`)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p} is corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{p}: not an mmdeploy job file")
    if meta.get("version") != VERSION:
        raise InputError(f"{p}: job format version {meta.get('version')!r}; this mmdeploy reads {VERSION}")
    if not isinstance(meta.get("shards"), dict):
        raise InputError(f"{p}: 'shards' must be an object")
    return meta


def _ours(name: str) -> bool:
    return (
        name in (JOB, SUMMARY, INDEX_DIR)
        or (name.startswith(("part-", ".part-")) and ".parquet" in name)
        or name.startswith(f".{JOB}")
        or name.startswith(f".{SUMMARY}")
    )


class JobStore:
    """A job folder held by one runner: ``open`` takes the folder's writer lock (common/locks.py;
    a second job into the same folder waits, then sees what the first finished), ``close`` lets go."""

    def __init__(self, root: Path, meta: dict[str, Any]):
        self.root, self.meta = root, meta
        self._lock = None

    def close(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls, root: str | os.PathLike, meta: dict[str, Any], resume: bool = False, overwrite: bool = False
    ) -> JobStore:
        """Start the job described by ``meta`` in ``root``, or continue it (``resume``).

        Never touches a folder that is not a job of ours: a non-empty folder without _job.json is
        refused, and ``overwrite`` removes only job files (_job.json, shards, summary, index)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise InputError(f"--out {root}: is a file; give a folder")
        lock = writer_lock(root, "job folder")
        lock.__enter__()
        try:
            store = cls._open(root, meta, resume, overwrite)
        except BaseException as exc:
            lock.__exit__(type(exc), exc, None)
            raise
        store._lock = lock
        return store

    @classmethod
    def _open(cls, root: Path, meta: dict[str, Any], resume: bool, overwrite: bool) -> JobStore:
        if root.is_dir() and (root / JOB).exists():
            old = read_job(root)
            if resume:
                for k in RESUME_KEYS + ("inputs",):
                    a = old.get(k) if k != "inputs" else old["inputs"].get("fingerprint")
                    b = meta.get(k) if k != "inputs" else meta["inputs"]["fingerprint"]
                    if a != b:
                        what = (
                            "the input list (files added, removed or renamed, or another pattern)"
                            if k == "inputs"
                            else k
                        )
                        raise InputError(
                            f"--resume {root}: {what} differs from the job's ({_short(a)} there, {_short(b)} now): "
                            "give a new --out, or --overwrite to start again"
                        )
                store = cls(root, old)
                store._drop_unfinished()
                return store
            if not overwrite:
                done = len(old["shards"])
                raise InputError(
                    f"--out {root} holds a job ({done} of {old.get('num_shards', '?')} shards done): "
                    "--resume to continue it, --overwrite to start again, or another --out"
                )
            for child in root.iterdir():
                if _ours(child.name):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif root.is_dir() and any(root.iterdir()):
            leftovers = [c for c in root.iterdir() if c.name.endswith(".tmp") and _ours(c.name)]
            if leftovers and len(leftovers) == len(list(root.iterdir())):  # a run killed as it began
                for c in leftovers:
                    c.unlink()
                return cls._open(root, meta, resume, overwrite)
            raise InputError(f"--out {root}: folder is not empty and holds no mmdeploy job: refusing to write into it")
        elif resume:
            raise InputError(f"--resume: {root} holds no job to resume")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {root}: cannot create it: {exc.strerror}") from None
        if not os.access(root, os.W_OK):
            raise InputError(f"--out {root}: folder is not writable")
        store = cls(root, {**meta, "shards": {}})
        store._save()
        return store

    def _drop_unfinished(self) -> None:
        """Remove what a killed run left: temporary files, and shards _job.json does not list."""
        for child in self.root.iterdir():
            n = child.name
            if n.endswith(".tmp") and _ours(n) or (n.startswith("part-") and n not in self.meta["shards"]):
                child.unlink()
        lost = [n for n in self.meta["shards"] if not (self.root / n).is_file()]
        for n in lost:  # listed but deleted since: computed again
            del self.meta["shards"][n]
        if lost:
            self._save()

    # -- state ---------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return int(self.meta["num_shards"])

    def pending(self) -> list[int]:
        done = self.meta["shards"]
        return [i for i in range(self.num_shards) if shard_name(i) not in done]

    def shard_range(self, i: int) -> range:
        s = int(self.meta["shard_size"])
        return range(i * s, min((i + 1) * s, int(self.meta["inputs"]["count"])))

    def broken(self) -> list[tuple[str, str]]:
        return [tuple(b) for sh in self.meta["shards"].values() for b in sh["broken"]]

    def _save(self) -> None:
        self.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            write_json_atomic(self.root / JOB, self.meta)
        except ResourceError as exc:
            if not self.meta["shards"]:
                raise
            raise ResourceError(f"{exc}; the finished shards are kept: --resume once there is room") from None

    # -- writing -------------------------------------------------------------------------
    def write_shard(
        self, i: int, inputs: Sequence[str], outputs: Sequence[Any], errors: Sequence[str | None]
    ) -> dict[str, Any]:
        """Shard i from the per-item results of its range (an error: the item is broken, its reason)."""
        pa = require("pyarrow", "corpus")
        pq = require("pyarrow.parquet", "corpus")
        rng = self.shard_range(i)
        if not (len(inputs) == len(outputs) == len(errors) == len(rng)):
            raise RuntimeError(f"shard {i}: {len(outputs)} results for {len(rng)} inputs")  # a runner bug, never input
        ok = [j for j, e in enumerate(errors) if e is None]
        m = self.meta
        out_col = m["output_column"]
        cols: dict[str, Any] = {
            "item": pa.array([rng[j] for j in ok], pa.int64()),
            m["input_column"]: pa.array([inputs[j] for j in ok], pa.string()),
        }
        if out_col == "embedding":
            dim = m.get("dim") or (len(outputs[ok[0]]) if ok else 0)
            if ok and m.get("dim") is None:
                m["dim"] = dim
            flat = np.asarray([outputs[j] for j in ok], np.float32).reshape(-1)
            cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        else:
            cols[out_col] = pa.array([outputs[j] for j in ok], pa.string())
        n = len(ok)
        for k in ("model", "variant", "bundle_sha256"):
            cols[k] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([m[k]]))
        table = pa.table(cols)
        name = shard_name(i)
        tmp = self.root / f".{name}.tmp"
        try:
            # embeddings stay uncompressed (float noise does not compress; a memory map reads them in place)
            pq.write_table(
                table,
                tmp,
                compression={c: ("NONE" if c == "embedding" else "ZSTD") for c in table.column_names},
                use_dictionary=[c for c in table.column_names if c not in ("embedding", "item")],
            )
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.root / name)
        except BaseException as exc:  # a full disk, or Ctrl-C mid-write: no temporary file is left
            done = f"{len(m['shards'])} finished shards kept: --resume once there is room"
            problem = disk_problem(exc, self.root, f"writing {name} of {self.root} ({done})")
            tmp.unlink(missing_ok=True)
            if problem is not None:
                raise problem from None
            raise
        entry = {"rows": n, "broken": [[inputs[j], errors[j]] for j, e in enumerate(errors) if e is not None]}
        m["shards"][name] = entry
        self._save()
        return entry

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.root / SUMMARY, summary)


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 24 else s[:12] + "…"


def finished_shards(root: Path) -> tuple[dict[str, Any], list[Path]]:
    """A job folder's metadata and its finished shard files, in shard order."""
    meta = read_job(root)
    files = [root / n for n in sorted(meta["shards"])]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{root}: shard {missing[0]} is listed in {JOB} but missing: rerun the job with --resume")
    return meta, files
