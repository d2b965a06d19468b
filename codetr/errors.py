"""The library's named errors: each says which file, key, id or iteration is at fault.

Every one of them derives from :class:`CodetrError`, which survives pickling whatever its
constructor takes. That matters under Ray: an exception raised in a worker process travels to
the driver pickled, and Python's default ``BaseException`` pickling calls ``cls(*args)`` with the
formatted message only, so an error built from ``(path, reason)`` arrived as
``__init__() missing 1 required positional argument`` instead of itself.

A :class:`CodetrError` is an error in what the user gave (a config, a data file, a checkpoint) or a
training run going wrong in a way that can be named (a non-finite loss): the platform prints its
message on one line, without a traceback (``--verbose`` shows it).
"""
from __future__ import annotations

from typing import Any


def _rebuild(cls: type, message: str, state: dict[str, Any]) -> "CodetrError":
    """Unpickling helper: the instance without calling ``cls.__init__``."""
    error = cls.__new__(cls, message)
    error.args = (message,)
    error.__dict__.update(state)
    return error


class CodetrError(Exception):
    """Base of the named errors; picklable with its message and attributes (``path``, ``iteration``, ...)."""

    def __reduce__(self):
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class NonFiniteLossError(CodetrError, FloatingPointError):
    """A training step produced a non-finite loss, gradient or matching cost.

    Attributes: ``iteration`` (the 1-based iteration that failed), ``terms`` (the non-finite
    loss terms with their values), ``image_ids`` and ``file_names`` of the batch (this rank's).
    """

    def __init__(self, iteration: int, terms: dict[str, float], image_ids: list[int], file_names: list[str],
                 what: str = "loss", hint: str = ""):
        shown = ", ".join(f"{k}={v}" for k, v in list(terms.items())[:8])
        if len(terms) > 8:
            shown += f", ... ({len(terms)} terms)"
        files = ", ".join(file_names[:8]) + (" ..." if len(file_names) > 8 else "")
        message = (f"non-finite {what} at iteration {iteration}{': ' + shown if shown else ''}; "
                   f"batch image ids {image_ids[:8]}{' ...' if len(image_ids) > 8 else ''}"
                   f"{f' ({files})' if files else ''}")
        super().__init__(message + (f". {hint}" if hint else ""))
        self.iteration, self.terms, self.what = iteration, dict(terms), what
        self.image_ids, self.file_names = list(image_ids), list(file_names)


class NonFiniteCostError(CodetrError, FloatingPointError):
    """Non-finite values reached an assignment (the Hungarian matcher's cost matrix): the model's
    predictions are NaN / inf, i.e. its parameters diverged. The training loop adds the batch."""


class CheckpointError(CodetrError, ValueError):
    """A checkpoint file is unreadable (truncated, corrupt), foreign (not this project's format) or
    unsafe to load; ``path`` names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"checkpoint {path}: {reason}")
        self.path, self.reason = str(path), reason


class CheckpointWriteError(CodetrError, OSError):
    """A checkpoint could not be written (no space left, a read-only or vanished folder, ...); ``path``
    names where it was going and ``cause`` says why. The previous checkpoint is untouched (writes are
    atomic), so a resume continues from it."""

    def __init__(self, path: str, cause: str):
        super().__init__(f"checkpoint {path} could not be written: {cause}; the previous checkpoint is intact "
                         "and a resume continues from it")
        self.path, self.cause = str(path), cause


def describe_os_error(error: BaseException) -> str:
    """``No space left on device (errno 28)``: an OSError's reason without the file name it may carry."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})"
    return f"{type(error).__name__}: {error}"
