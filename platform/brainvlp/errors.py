"""Errors the user can fix: the CLI prints ``brainvlp: <one line>`` and exits with status 2 (``--debug``
adds the traceback). Anything else is a bug and keeps its traceback (exit status 1).

This module imports nothing heavy, so any module can raise these without slowing ``brainvlp validate``.

``UserError`` derives from ``ValueError`` as ``SpecError`` does, so a ``raise ValueError(...)`` about the
user's input becomes ``raise UserError(...)`` without breaking a caller that catches ``ValueError``; the
two subclasses do the same for ``FileNotFoundError`` and ``RuntimeError``.
"""

from __future__ import annotations


class UserError(ValueError):
    """A condition the user can fix: a missing or mismatched input, an unwritable output directory, a
    run directory that holds another job. The message is one line that names what to change."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (still a ``FileNotFoundError``)."""


class InputConflictError(UserError, RuntimeError):
    """The inputs or outputs disagree with what is already there, e.g. a run directory that holds an ingest
    of another manifest (still a ``RuntimeError``)."""


def one_line(error: BaseException) -> str:
    """The error's message on one line. A Ray task's error (``RayTaskError``, which also derives from the
    original error's class) carries the remote traceback in its text, so its ``cause`` is used instead."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    text = " ".join(str(error).split())
    return text or type(error).__name__
