"""The error hierarchy and the exit codes it maps to.

0 ok · 1 a check failed · 2 bad input or usage · 3 a needed dependency or device is missing ·
4 an internal error (a bug in deploy: never mistaken for a failed check).
Every error prints as one line: what is wrong, which file, and what to do.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_INTERNAL = 4


class DeployError(Exception):
    """Base class: a problem we can explain in one line."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(DeployError):
    """A file, spec, shape or option the user gave is wrong."""

    exit_code = EXIT_BAD_INPUT


class MissingDependencyError(DeployError):
    """A package or device needed for this request is not on this machine."""

    exit_code = EXIT_MISSING_DEPENDENCY


class CheckFailedError(DeployError):
    """An artifact is not equivalent to its reference within tolerance."""

    exit_code = EXIT_CHECK_FAILED


def internal_error_text(error: BaseException) -> str:
    """How a bug in deploy is said, everywhere (CLI, a crashed candidate, a demo row): one line, exit 4."""
    text = (str(error).strip().splitlines() or [""])[0][:240]
    return f"internal error {type(error).__name__}: {text} (a bug in deploy; DEPLOY_DEBUG=1 shows the traceback)"


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:240]
