"""The bundle: a directory with manifest.json, every artifact hashed, written atomically.

Layout:
    manifest.json
    tokenizer.json, preprocessor_config.json, ...     copied from the checkpoint
    onnx/<component>.onnx                              fp32 ONNX (the onnxruntime fp32 artifact)
    openvino/<component>.xml/.bin                      OpenVINO IR (fp32 and bf16 share it)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.diskspace import disk_problem, resource_error
from ..common.locks import lock_path, remove_stale_lock, writer_lock
from ..common.signals import check_terminated
from ..errors import BundleError, MMDeployError
from .manifest import validate_manifest

if TYPE_CHECKING:
    from .session import BuildResult

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
VERIFIED = ".verified.json"  # stat stamps of files that hashed correctly (see Bundle.verify)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    """One runnable variant of one component: (component, backend, precision)."""

    component: str
    backend: str
    precision: str
    path: str  # main file, relative to the bundle
    files: list[str] = field(default_factory=list)  # every file it needs (incl. path)
    runtime: dict[str, Any] = field(default_factory=dict)  # options passed to open()
    built_for: dict[str, Any] = field(default_factory=dict)  # target, library versions
    parity: dict[str, Any] = field(default_factory=dict)  # cosine, max_abs_diff vs PyTorch
    gate: dict[str, Any] = field(default_factory=dict)  # {"min_cosine": x, "passed": bool}
    recipe: dict[str, Any] = field(default_factory=dict)  # how it was made (quantization settings, kept-float layers)

    @classmethod
    def from_build(
        cls, built: BuildResult, component: str, backend: str, precision: str, *, target: str, parity: dict, gate: dict
    ) -> Artifact:
        """The manifest entry of what a backend's build() made (export, and `mmdeploy build` on the device)."""
        return cls(
            component=component,
            backend=backend,
            precision=precision,
            path=built.path,
            files=built.files,
            runtime=built.runtime,
            built_for={"target": target, **built.built_for},
            parity=parity,
            gate=gate,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.component, self.backend, self.precision)

    @property
    def passed(self) -> bool:
        return bool(self.gate.get("passed", False))


class Bundle:
    """A read-only view of a bundle directory. Verifies schema and hashes on demand."""

    def __init__(self, root: str | os.PathLike, manifest: dict[str, Any]):
        self.root = Path(root)
        self.manifest = manifest
        # keys this version does not know (a newer writer's optional fields) are kept in the manifest
        known = {f.name for f in fields(Artifact)}
        self.artifacts = [Artifact(**{k: v for k, v in a.items() if k in known}) for a in manifest.get("artifacts", [])]
        self._verified: set[str] = set()

    # -- reading -------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike) -> Bundle:
        root = Path(root)
        if not root.exists():
            raise BundleError(f"bundle not found: {root}")
        if not root.is_dir():
            raise BundleError(f"not a bundle directory: {root}")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{mpath} is missing: {root} is not an mmdeploy bundle")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{mpath} is corrupt: {exc}") from None
        except RecursionError:
            raise BundleError(f"{mpath} is corrupt: nested too deeply to be a manifest") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{mpath}: must hold a JSON object, got {type(manifest).__name__}")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{mpath} has schema_version {version!r}; this mmdeploy reads version "
                f"{SCHEMA_VERSION}: re-export the bundle or use a matching mmdeploy"
            )
        validate_manifest(manifest, str(mpath))
        return cls(root, manifest)

    @property
    def name(self) -> str:
        return self.manifest.get("model", self.root.name)

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def components(self) -> dict[str, Any]:
        return self.manifest.get("components", {})

    @property
    def schema_version(self) -> int:
        return self.manifest["schema_version"]

    @property
    def source(self) -> dict[str, Any]:
        """Where the weights came from: registry name, folder or hub id, weights sha256, a
        distilled student's ``distilled_from`` (manifest.py documents the fields)."""
        return self.manifest.get("source", {})

    def file_bytes(self, rels: Iterable[str]) -> int:
        """The size of these files of the bundle, as the manifest records them."""
        return sum(self.manifest["files"][rel]["bytes"] for rel in rels)

    def path(self, rel: str) -> Path:
        """A file of the bundle; never one outside it (the manifest is checked on open, and a
        symlink inside the bundle that points out is refused here)."""
        p = self.root / rel
        root = self.root.resolve()
        if not p.resolve().is_relative_to(root):
            raise BundleError(f"{p}: resolves outside the bundle {root}: refusing to open it")
        return p

    def verify(self, rels: Iterable[str], full: bool = False) -> None:
        """Check that files exist and match the sha256 recorded in the manifest.

        Hashing a ~1 GB captioner costs seconds on every load, so a file whose stat stamp equals
        the one recorded when it last hashed correctly (``.verified.json`` in the bundle, best
        effort) is not hashed again. The stamp holds what an in-place edit cannot put back: the
        ctime (set by the kernel on every write and on every mtime reset) and the inode beside
        size and mtime. A file that fails loses its stamp; ``full`` re-hashes everything."""
        table = self.manifest.get("files", {})
        stamps = {} if full else self._stamps()
        fresh: dict[str, list | None] = {}
        try:
            for rel in rels:
                if rel in self._verified:
                    continue
                entry = table.get(rel)
                if entry is None:
                    raise BundleError(f"{self.root / rel} is not listed in {self.root / MANIFEST}")
                p = self.path(rel)
                if not p.is_file():
                    raise BundleError(f"{p} is missing from the bundle: re-export it")
                st = p.stat()
                stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, entry["sha256"]]
                if stamps.get(rel) != stamp:
                    if st.st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
                        fresh[rel] = None
                        raise BundleError(
                            f"{p} does not match its sha256 in the manifest (modified or corrupt): re-export it"
                        )
                    fresh[rel] = stamp
                self._verified.add(rel)
        finally:
            if fresh:
                self._save_stamps(fresh)

    def _stamps(self) -> dict[str, list]:
        try:
            d = json.loads((self.root / VERIFIED).read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_stamps(self, fresh: dict[str, list | None]) -> None:
        """Merge fresh stamps in; None drops a file's stamp (it failed)."""
        try:  # read-only bundles (a device image) simply hash again next time
            d = {k: v for k, v in {**self._stamps(), **fresh}.items() if v is not None}
            tmp = self.root / f"{VERIFIED}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(d))
            os.replace(tmp, self.root / VERIFIED)
        except OSError:
            pass

    def verify_all(self, full: bool = False) -> None:
        self.verify(self.manifest.get("files", {}).keys(), full=full)

    def find(
        self,
        component: str | None = None,
        backend: str | None = None,
        precision: str | None = None,
    ) -> list[Artifact]:
        return [
            a
            for a in self.artifacts
            if (component is None or a.component == component)
            and (backend is None or a.backend == backend)
            and (precision is None or a.precision == precision)
        ]


# -- writing ----------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sibling_dir(target: Path, kind: str) -> Path:
    """A work folder beside `target` (kind: staging, old) named with this pid, so that
    remove_stale can tell a killed run's leftovers from a live run's."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): a SIGKILL at any
    instant leaves one whole directory at each name. False where the system or file system lacks it."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_into_place(src: Path, target: Path) -> None:
    """Rename a finished directory onto `target`; an existing target is replaced only once
    the new one is in place (restored if the rename fails). Where the kernel can, the two are
    exchanged in one step, so no instant exists without a whole bundle at `target`; elsewhere a
    kill between the two renames leaves the old one beside it, and remove_stale puts it back."""
    if target.is_dir() and not target.is_symlink() and _exchange(src, target):
        _fsync_dir(target.parent)
        shutil.rmtree(src, ignore_errors=True)  # now the old bundle
        return
    old = None
    if target.exists():
        old = sibling_dir(target, "old")
        os.rename(target, old)
    try:
        os.rename(src, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything that is not wholly a bundle we wrote: a file, a folder with no
    valid manifest (someone else's manifest.json included), or a bundle holding files of the
    user's own that the manifest does not list (they would be lost)."""
    if not target.exists() and not target.is_symlink():
        _check_creatable(target)
        return
    if not target.is_dir():
        raise BundleError(f"{target} exists and is not a directory: refusing to replace it")
    if not any(target.iterdir()):
        return
    for attempt in range(3):  # another writer may swap a new bundle in while we look: look again
        try:
            b = Bundle.open(target)
        except BundleError as exc:
            raise BundleError(
                f"{target} exists and is not an mmdeploy bundle ({exc}): refusing to replace it"
            ) from None
        ours = set(b.manifest["files"]) | {MANIFEST, VERIFIED}
        foreign = next(
            (
                p.relative_to(target).as_posix()
                for p in sorted(target.rglob("*"))
                if (p.is_file() or p.is_symlink()) and p.relative_to(target).as_posix() not in ours
            ),
            None,
        )
        if foreign is None:
            return
        try:
            swapped = json.loads((target / MANIFEST).read_text()) != b.manifest
        except (OSError, ValueError):
            swapped = True
        if not swapped or attempt == 2:
            raise BundleError(
                f"{target} holds {foreign}, which is not part of the bundle: refusing to replace it "
                "(move it away or choose another -o)"
            )


def cannot_write_in(folder: Path) -> str | None:
    """Why no new entry can be made in ``folder``, or None. os.access says yes to root and to
    /proc: creating one is the real test, so a read-only output fails before the work."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mmdeploy-probe-", dir=folder))
    except OSError as exc:
        from ..common.diskspace import RESOURCE_ERRNOS, file_system

        mount, fstype = file_system(folder)  # which disk, when it is the disk's doing
        where = f" (the file system at {mount}, {fstype})" if exc.errno in RESOURCE_ERRNOS else ""
        return f"cannot write in {folder}: {exc.strerror or exc}{where}"
    return None


def _check_creatable(target: Path) -> None:
    """The nearest existing folder above ``target`` takes a new entry."""
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BundleError(f"{target}: {parent} is not a directory")
    if why := cannot_write_in(parent):
        raise BundleError(f"{target}: {why}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove what killed runs left beside `target` (sibling_dir folders of a pid that no
    longer runs, and lock files nobody holds, the stages' own included); returns what was removed."""
    gone = []
    pat = re.compile(rf"^\.{re.escape(target.name)}\.(?:staging|old)-(\d+)-[0-9a-f]{{8}}$")
    for p in sorted(target.parent.glob(f".{target.name}.*")):
        m = pat.match(p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(1))):
            if ".old-" in p.name and not target.exists():  # killed between swap_into_place's renames
                os.rename(p, target)
                continue
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    # what a stage (export+quantize's) had of its own: its lock file and its writers' stages
    # (..name.staging-PID-x.lock, ..name.staging-PID-x.staging-PID-y), by the same dead pid
    nested = re.compile(rf"^\.\.{re.escape(target.name)}\.(?:staging|old)-(\d+)-[0-9a-f]{{8}}\.")
    for p in target.parent.glob(f"..{target.name}.*"):
        m = nested.match(p.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
        elif p.name.endswith(".lock") and remove_stale_lock(p):
            gone.append(p)
    if lock_path(target).is_file() and remove_stale_lock(lock_path(target)):  # free: its writer died
        gone.append(lock_path(target))
    return gone


class BundleWriter:
    """Stage a bundle next to its target and swap it in only when complete.

    with BundleWriter(out, base=existing_bundle_or_None) as w:
        w.add_file(...)  / w.stage(rel) -> Path to write, then w.register(rel)
        w.manifest[...] = ...
    On any exception the staging directory is removed and the target is untouched.
    With `base`, the existing bundle's files are hard-linked (or copied) into the stage,
    so adding a variant never rewrites or endangers what is there.

    One writer at a time: the target's writer lock (common/locks.py) is held from enter to exit,
    and `base` is read again under it (``w.base``), so a writer that waited builds on what the
    one before it left, and every writer's work stays. Without `base` (export), the bundle that
    is there at commit keeps its variants built from the very same fp32 graphs. `adopt`: a
    finished stage folder (export's export+quantize) to swap in the same way.
    """

    def __init__(
        self,
        target: str | os.PathLike,
        base: Bundle | None = None,
        overwrite: bool = True,
        log=None,
        adopt: str | os.PathLike | None = None,
    ):
        self.target = Path(target).absolute()
        self.overwrite = overwrite
        self.stage_dir = Path(adopt).absolute() if adopt is not None else sibling_dir(self.target, "staging")
        self.manifest: dict[str, Any] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.artifacts: list[Artifact] = []
        self.base = base
        self._adopt = adopt is not None
        self._log = log or (lambda s: None)
        self._lock = None
        self._linked: set[str] = set()  # stage files that are hard links to the base's: unlinked before a write

    def __enter__(self) -> BundleWriter:
        self._lock = writer_lock(self.target, "bundle")
        self._lock.__enter__()
        try:
            self._enter()
        except BaseException as exc:
            self._release(exc)
            raise
        return self

    def _enter(self) -> None:
        if self.base is not None and self.base.root.absolute() == self.target:
            self.base = Bundle.open(self.target)  # what is there now, under the lock
        if self.target.exists() and not self.overwrite:
            raise BundleError(f"{self.target} exists: pass --overwrite or choose another -o")
        check_replaceable(self.target)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.target)
            if self._adopt:
                self.manifest = json.loads((self.stage_dir / MANIFEST).read_text())
                self.files = dict(self.manifest.get("files", {}))
                self.artifacts = [Artifact(**a) for a in self.manifest.get("artifacts", [])]
            else:
                self.stage_dir.mkdir()
        except OSError as exc:
            if isinstance(err := resource_error(exc, self.target.parent, f"writing {self.target}"), MMDeployError):
                raise err from None
            raise BundleError(f"cannot write {self.target}: {exc.strerror or exc}") from None
        if self.base is not None:
            try:
                self._link_base(self.base)
            except BaseException:
                shutil.rmtree(self.stage_dir, ignore_errors=True)
                raise

    def _release(self, exc: BaseException | None = None) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(type(exc) if exc else None, exc, None)

    def _link_base(self, base: Bundle) -> None:
        base.verify_all()
        self.manifest = json.loads(json.dumps(base.manifest))
        self.files = dict(self.manifest.get("files", {}))
        self.artifacts = [Artifact(**asdict(a)) for a in base.artifacts]
        for rel in self.files:
            dst = self.stage_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".onnx.data"):  # onnx refuses external weights with several hard links
                shutil.copy2(base.root / rel, dst)
                continue
            try:
                os.link(base.root / rel, dst)
                self._linked.add(rel)
            except OSError:
                shutil.copy2(base.root / rel, dst)

    def stage(self, rel: str) -> Path:
        """Path inside the stage to write `rel` to (parents created). A file linked from the base
        bundle is unlinked first: writing through the hard link would change the live bundle."""
        p = self.stage_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        # OpenVINO writes the weights beside the IR
        for linked in (rel, rel[:-4] + ".bin") if rel.endswith(".xml") else (rel,):
            if linked in self._linked:
                (self.stage_dir / linked).unlink(missing_ok=True)
                self._linked.discard(linked)
        return p

    def register(self, rel: str) -> dict[str, Any]:
        """Hash and fsync a file written into the stage, and list it in the manifest."""
        p = self.stage_dir / rel
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        entry = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        self.files[rel] = entry
        return entry

    def add_file(self, src: str | os.PathLike, rel: str) -> None:
        shutil.copyfile(src, self.stage(rel))
        self.register(rel)

    def write_json(self, rel: str, data: Any) -> None:
        self.stage(rel).write_text(json.dumps(data, indent=2))
        self.register(rel)

    def add_artifact(self, artifact: Artifact) -> None:
        for rel in artifact.files or [artifact.path]:
            if rel not in self.files:
                raise BundleError(f"artifact file {rel} was not registered in the bundle")
        if not artifact.files:
            artifact.files = [artifact.path]
        self.artifacts = [a for a in self.artifacts if a.key != artifact.key] + [artifact]

    def remove_unreferenced(self, keep: Iterable[str] = ()) -> None:
        """Drop staged files no artifact uses (e.g. an IR replaced by a rebuild)."""
        used = set(keep)
        for a in self.artifacts:
            used.update(a.files)
        for rel in list(self.files):
            if rel.startswith(("onnx/", "openvino/", "tensorrt/")) and rel not in used:
                (self.stage_dir / rel).unlink(missing_ok=True)
                del self.files[rel]

    def _keep_same_graph(self, old: Bundle) -> None:
        """export over a bundle: the variants there built from the very same fp32 graphs (same
        family, components and ONNX hashes) stay, so a quantize or bench that finished first keeps
        its work; built from other graphs, they no longer apply and the log says they went."""
        comps = self.manifest.get("components", {})

        def graphs(files: dict, components: dict) -> dict:
            rels = [r for c in components.values() for r in (c.get("onnx"), f"{c.get('onnx')}.data")]
            return {r: files[r]["sha256"] for r in rels if r in files}

        mine = {(a.backend, a.precision) for a in self.artifacts}
        theirs = sorted({(a.backend, a.precision) for a in old.artifacts} - mine)
        old_files = old.manifest.get("files", {})
        same = (
            old.manifest.get("family") == self.manifest.get("family")
            and set(old.components) == set(comps)
            and graphs(old_files, old.components) == graphs(self.files, comps)
        )
        if not same:
            if theirs:
                self._log(
                    f"{self.target} held {', '.join('/'.join(k) for k in theirs)} built from other fp32 graphs: "
                    "replaced (quantize them again if you need them)"
                )
            return
        kept = []
        for key in theirs:
            arts = [a for a in old.artifacts if (a.backend, a.precision) == key]
            rels = list(dict.fromkeys(r for a in arts for r in a.files))
            if any(r in self.files and self.files[r]["sha256"] != old_files[r]["sha256"] for r in rels):
                continue  # a file of the same name rebuilt differently: the old variant cannot share it
            try:
                old.verify(rels)
            except BundleError as exc:
                self._log(f"{'/'.join(key)} of the bundle there not kept: {exc}")
                continue
            for r in rels:
                if r not in self.files:
                    dst = self.stage_dir / r
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        if r.endswith(".onnx.data"):
                            raise OSError  # onnx refuses external weights with several hard links
                        os.link(old.root / r, dst)
                    except OSError:
                        shutil.copy2(old.root / r, dst)
                    self.files[r] = dict(old_files[r])
            self.artifacts += [Artifact(**asdict(a)) for a in arts]
            kept.append("/".join(key))
        have = {f"{a.backend}/{a.precision}" for a in self.artifacts}
        for section in ("measured", "measured_busy"):  # same graphs, same speeds
            for machine, table in old.manifest.get(section, {}).items():
                ours = self.manifest.setdefault(section, {}).setdefault(machine, {})
                for k, v in table.items():
                    if k in have:
                        ours.setdefault(k, v)
        checks = old.manifest.get("variant_checks", {}).get("greedy_agreement_vs_fp32", {})
        for k in kept:
            if k in checks:
                self.manifest.setdefault("variant_checks", {}).setdefault("greedy_agreement_vs_fp32", {})[k] = checks[k]
        if kept:
            self._log(f"kept {', '.join(kept)} of the bundle there (built from the same fp32 graphs)")

    def _commit(self) -> None:
        check_terminated()  # a SIGTERM lost in a finalizer still writes nothing
        if self.base is None and (self.target / MANIFEST).is_file():
            try:
                old = Bundle.open(self.target)
            except BundleError:
                old = None  # check_replaceable let it through: an empty or unreadable folder
            if old is not None:
                self._keep_same_graph(old)
        self.manifest["schema_version"] = SCHEMA_VERSION
        self.manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.manifest["files"] = dict(sorted(self.files.items()))
        self.manifest["artifacts"] = [asdict(a) for a in self.artifacts]
        mpath = self.stage_dir / MANIFEST
        mpath.write_text(json.dumps(self.manifest, indent=2))
        with open(mpath, "rb") as f:
            os.fsync(f.fileno())
        _fsync_dir(self.stage_dir)
        swap_into_place(self.stage_dir, self.target)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                try:
                    self._commit()
                except BaseException as failed:
                    self._discard(failed)
                    raise
            else:
                self._discard(exc)
        finally:
            self._release()
        return False

    def _discard(self, exc: BaseException | None) -> None:
        """Remove the stage; a failure that a full (or read-only) disk caused is raised as that,
        asked before the stage goes (removing it frees the space), never as a corrupt bundle."""
        problem = None
        if isinstance(exc, Exception) and not isinstance(exc, MMDeployError):
            kept = "; the bundle there is unchanged" if (self.target / MANIFEST).is_file() else ""
            problem = disk_problem(exc, self.stage_dir, f"writing {self.target}{kept}")
        shutil.rmtree(self.stage_dir, ignore_errors=True)
        if problem is not None:
            raise problem from None
