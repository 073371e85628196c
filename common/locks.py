"""One writer at a time per bundle or job folder: an OS file lock on a file beside the target.

``.<name>.lock`` sits beside the target, not inside it, so swapping a finished stage in is
unaffected. fcntl.flock is released by the kernel when the holder dies (SIGKILL included), so a
killed writer never leaves the target locked; the file itself holds who has it (pid, command,
since when) for the next writer's message. The holder removes the file when it lets go; a
writer that got the lock of a file removed meanwhile (its inode no longer at the path) takes
the lock again on the new file, so two writers never hold locks of different files.

Readers (load, serve, info) never take it: they see the target before or after a swap, whole.
Re-entrant within a thread: export's atomic export+quantize takes the same target's lock again.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import LockedError
from .diskspace import resource_error

_settings: dict = {"wait": True, "say": None}
_held: dict[tuple[str, int], list] = {}  # (lock path, thread id) -> [fd, depth]
_mutex = threading.Lock()


def configure(wait: bool = True, say: Callable[[str], None] | None = None) -> None:
    """wait=False (the CLI's --no-wait): a busy target fails with LockedError instead of waiting;
    say: where the one waiting message goes (default: stderr)."""
    _settings["wait"], _settings["say"] = wait, say


def lock_path(target: str | os.PathLike) -> Path:
    t = Path(target).absolute()
    return t.parent / f".{t.name}.lock"


def holder(path: Path) -> str:
    """Who holds the lock file at ``path``, in words (what it wrote when it took the lock)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%H:%M:%S UTC", time.gmtime(info.get("since", 0)))
    ago = max(0, int(time.time() - info.get("since", time.time())))
    return f"pid {info['pid']} ({info.get('command') or '?'}), since {since} ({ago} s ago)"


def _command() -> str:
    try:
        argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
        words = [a.decode(errors="replace") for a in argv if a]
    except OSError:
        words = list(sys.argv)
    if len(words) > 1 and Path(words[0]).name.startswith("python") and Path(words[1]).name == "mmdeploy":
        words = words[1:]
    if words:
        words[0] = Path(words[0]).name
    text = " ".join(" ".join(words).split())  # one line, whatever the arguments hold
    return text if len(text) <= 160 else text[:157] + "..."


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise resource_error(exc, path, f"taking the writer lock {path}") from None


@contextmanager
def writer_lock(target: str | os.PathLike, what: str = "bundle", wait: bool | None = None) -> Iterator[Path]:
    """Hold the writer lock of ``target`` (a bundle or a job folder) for the block.

    Busy: print one line naming the holder and wait for it (or, with wait=False / --no-wait,
    raise LockedError with that line: exit 2)."""
    import fcntl

    path = lock_path(target)
    key = (str(path), threading.get_ident())
    with _mutex:
        if key in _held:
            _held[key][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _mutex:
                _held[key][1] -= 1
        return
    wait = _settings["wait"] if wait is None else wait
    said = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise resource_error(exc, path.parent, f"creating {path.parent}") from None
    while True:
        fd = _open(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = holder(path)
                if not wait:
                    raise LockedError(
                        f"{Path(target).absolute()} is being written by {who}: try again when it finishes, "
                        "or leave out --no-wait to wait for it"
                    ) from None
                if not said:
                    (_settings["say"] or _stderr)(
                        f"waiting for {Path(target).absolute()}: {what} being written by {who} "
                        "(--no-wait exits instead)"
                    )
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed it as it let go: lock the file there now
                os.close(fd)
                continue
            break
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
    try:
        info = json.dumps({"pid": os.getpid(), "command": _command(), "since": time.time(), "what": what})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # holder info is a courtesy; the lock holds without it
            _release(path, fd)
            raise resource_error(exc, path, f"taking the writer lock {path}") from None
    with _mutex:
        _held[key] = [fd, 1]
    try:
        yield path
    finally:
        with _mutex:
            del _held[key]
        _release(path, fd)


def _release(path: Path, fd: int) -> None:
    import fcntl

    try:
        os.unlink(path)  # while still holding it: a waiter that gets this inode sees it gone and retries
    except OSError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_stale_lock(path: Path) -> bool:
    """Remove a lock file nobody holds (its writer was killed); True if removed."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if same:
        _release(path, fd)
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return False


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
