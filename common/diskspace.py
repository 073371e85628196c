"""Resources named as what they are: a full disk, a quota, a read-only or forbidden file system,
too many open files become one line naming the file system (mount point) and, where known, the
space needed and free, never "a corrupt bundle"."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import ResourceError

# what ran out, in the system's own words ("No space left on device", "Read-only file system")
RESOURCE_ERRNOS = {
    code: os.strerror(code)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE)
}
# below this, an error that is not an OSError (a short write read back as a DecodeError, a backend's
# own "cannot write") while writing to the file system is taken for the disk problem it is
NEARLY_FULL = 16 << 20


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def file_system(path: str | os.PathLike) -> tuple[str, str]:
    """(mount point, type) of the file system holding ``path`` (or its nearest existing parent)."""
    p = _existing(path)
    try:
        dev = p.stat().st_dev
        while p != p.parent and p.parent.stat().st_dev == dev:
            p = p.parent
    except OSError:
        pass
    fstype = "?"
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[1].replace("\\040", " ") == str(p):
                fstype = parts[2]
    except OSError:
        pass
    return str(p), fstype


def free_bytes(path: str | os.PathLike) -> tuple[int, int] | None:
    """(free to this user, total) bytes of the file system holding ``path``; None if unknown."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n < 2**30 else f"{n / 2**30:,.2f} GB"


def _where(path: str | os.PathLike) -> str:
    mount, fstype = file_system(path)
    room = free_bytes(path)
    space = f", {mb(room[0])} free of {mb(room[1])}" if room else ""
    return f"the file system at {mount} ({fstype}{space})"


def is_resource_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        return True
    # pyarrow / ONNX Runtime / OpenVINO carry the errno in their message only
    text = str(exc)
    return any(os.strerror(c) in text for c in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))


def resource_error(exc: BaseException, path: str | os.PathLike, doing: str) -> BaseException:
    """A ResourceError naming the file system of ``path`` for a resource errno; any other error
    unchanged. ``doing``: what failed, with its path ("writing /x/bundle")."""
    if not is_resource_error(exc):
        return exc
    code = getattr(exc, "errno", None)
    # the system's own words ("Read-only file system"), also where a library only quotes them
    what = RESOURCE_ERRNOS.get(code) or next(
        os.strerror(c) for c in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) if os.strerror(c) in str(exc)
    )
    name = getattr(exc, "filename", None)
    doing = f"{doing} ({name})" if name and str(name) not in doing else doing
    if code in (errno.EMFILE, errno.ENFILE):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return ResourceError(f"{what} (this process may open {soft}): {doing}: raise it with  ulimit -n")
    hint = {
        errno.EACCES: "write elsewhere or fix the folder's permissions",
        errno.EPERM: "write elsewhere or fix the folder's permissions",
        errno.EROFS: "write elsewhere",
    }.get(code, "free some space there or write elsewhere")
    return ResourceError(f"{what}: {_where(path)}: {doing}: {hint}")


def nearly_full(path: str | os.PathLike) -> bool:
    room = free_bytes(path)
    return room is not None and room[0] < NEARLY_FULL


def disk_problem(exc: BaseException, path: str | os.PathLike, doing: str) -> ResourceError | None:
    """The ResourceError an error met while writing under ``path`` stands for, or None: a resource
    errno, or any other error (a file this command just wrote read back truncated) on a file system
    that is now nearly full. Call it before the partial output is removed (that frees the space)."""
    if isinstance(exc, ResourceError):
        return exc
    if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM's unwinding: not the disk's doing
        return None
    err = resource_error(exc, path, doing)
    if isinstance(err, ResourceError):
        return err
    if nearly_full(path):
        # the original message is left out on purpose: a parser's "corrupt" would blame the bundle
        return ResourceError(
            f"out of space: {_where(path)}: {doing} failed ({type(exc).__name__} on a file this command "
            "wrote, cut short by the full disk): free some space there or write elsewhere"
        )
    return None


def check_space(path: str | os.PathLike, need: int, what: str) -> str:
    """Refuse, before the work, a write of about ``need`` bytes that cannot fit under ``path``;
    returns the line that says what will be written and the room there."""
    room = free_bytes(path)
    if room is None:
        return ""
    mount, fstype = file_system(path)
    if room[0] < need:
        raise ResourceError(
            f"{what} needs about {mb(need)} on the file system at {mount} ({fstype}); {mb(room[0])} free of "
            f"{mb(room[1])}: free some space there or write elsewhere"
        )
    return f"{what}: about {mb(need)} to write, {mb(room[0])} free on {mount}"
