"""The `deploy` command line: a thin shell, one module per verb (or verb family) registering on one typer
app. Each verb parses, calls the public API (:mod:`deploy.api`, the same functions ``import deploy`` gives),
renders the report and exits with its code; the shared option types live in :mod:`deploy.cli.options`, so a
shared option is the same object in every verb. May import anything below it: it is the top layer.

Exit codes: 0 ok · 1 a check failed · 2 bad input or usage · 3 a needed dependency or device is missing ·
4 internal error.
"""

from __future__ import annotations

from . import bench, build, check, debug, demo, export, fuse, info, pipeline, prune, quantize, sweep  # noqa: F401  registering the verbs
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point (click reports usage errors with exit code 2)."""
    app()
