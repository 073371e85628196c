"""Typed user-facing errors. The CLI prints str(err) on one line and exits with code 2."""

from __future__ import annotations


class MMDeployError(Exception):
    """Base for errors caused by user input or environment; never a bug."""

    exit_code = 2


class MissingExtraError(MMDeployError):
    def __init__(self, module: str, extra: str):
        super().__init__(f"{module} is not installed: install it with  pip install 'mmdeploy[{extra}]'")
        self.module, self.extra = module, extra


class CheckpointError(MMDeployError):
    """Missing, unreadable or unsupported checkpoint."""


class UnsupportedModelError(CheckpointError):
    pass


class BundleError(MMDeployError):
    """Bundle missing, corrupt, tampered or of an unknown schema."""


class BundleConfigError(BundleError, ValueError):
    """A bundle's preprocess / tokenizer settings are invalid (a ValueError too, for callers of the classes)."""


class ExportError(MMDeployError):
    """Export failed, or the exported graph does not match PyTorch."""


class ParityError(ExportError):
    pass


class InputError(MMDeployError):
    """Bad user input: unreadable image, empty text list, bad flag value."""


class CapabilityError(InputError):
    """A family asked for something it does not declare (e.g. classify on a caption bundle)."""


class Interrupted(MMDeployError):
    """Ctrl-C / SIGTERM during a job that keeps what it finished (the message says what)."""

    exit_code = 130


class BackendError(MMDeployError):
    """Unknown backend/precision, or a backend that cannot run here."""


class ResourceError(MMDeployError):
    """The machine lacks what a write needs: space, quota, a writable file system, permission,
    file descriptors. Named as such (with the file system), never as a corrupt bundle."""


class LockedError(MMDeployError):
    """Another process is writing the bundle or job folder, and --no-wait was given."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, whitespace folded, at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require(module: str, extra: str):
    """Import a heavy optional module or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(module, extra) from exc
