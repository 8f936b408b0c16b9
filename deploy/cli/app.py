"""The typer app every verb module registers on, and what the verbs share: the consoles, error handling
(one line, an exit code), loading a model spec, path guarding, and the end of a judging verb.

Exit codes: 0 ok · 1 a check failed · 2 bad input or usage · 3 a needed dependency or device is missing ·
4 internal error.
"""

from __future__ import annotations

import functools
import os
import sys
import typing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .._version import __version__
from ..errors import EXIT_BAD_INPUT, EXIT_INTERNAL, CheckFailedError, DeployError, internal_error_text


class _LazyApi:
    """:mod:`deploy.api`, imported when a verb first uses it, so `deploy --help` does not load torch (1.2 s)."""

    def __getattr__(self, name: str):
        from .. import api as module

        return getattr(module, name)


api = _LazyApi()

app = typer.Typer(
    name="deploy",
    help="Make PyTorch vision models fast to serve without changing what they compute.\n\n"
         "A MODEL is a zoo name (resnet18; see `deploy zoo`), package.module:factory, "
         "path/to/file.py:factory (literal arguments allowed: file.py:resnet50(num_classes=10)), or an .onnx "
         "file.\n\nExit codes: 0 ok, 1 a check failed, 2 bad input, 3 a dependency or device is missing, "
         "4 a bug in deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # panels; every help text is escaped at registration (verb), so it shows as written
)
# Pipes and CI logs get wide tables instead of rich's 80-column default, so numbers are never cut.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 170)
err = Console(stderr=True, highlight=False)

def _version(value: bool) -> None:
    if value:
        typer.echo(f"deploy {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print deploy's version and exit.")] = False,
) -> None:
    """Make PyTorch vision models fast to serve without changing what they compute."""


def handle_errors(fn):
    """Turn our errors into one line on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with api.call(fn.__name__, dict(kwargs), notify=lambda text: err.print(text, markup=False)):
                return fn(*args, **kwargs)
        except CheckFailedError as error:
            typer.echo(str(error), err=False)
            raise typer.Exit(error.exit_code) from None
        except DeployError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except OSError as error:  # unreadable/unwritable paths, full disks
            where = f" ({error.filename})" if error.filename else ""
            typer.echo(f"error: {error.strerror or error}{where}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Exception as error:
            if os.environ.get("DEPLOY_DEBUG"):
                raise
            typer.echo(f"error: {internal_error_text(error)}", err=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


_literal_done: set[int] = set()  # option objects shared by several verbs are escaped once


def _literal(fn, command_options: dict) -> None:
    """Escape rich markup in a verb's help texts (its options', its docstring, its epilog) so that a literal
    ``[matrix]`` is shown as written instead of being taken for a style tag and dropped."""
    from rich.markup import escape

    hints = typing.get_type_hints(fn, include_extras=True)  # evaluated once: typer then reads these objects
    for hint in hints.values():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, typer.models.ParameterInfo) and meta.help and id(meta) not in _literal_done:
                meta.help = escape(meta.help)
                _literal_done.add(id(meta))
    fn.__annotations__ = hints
    if fn.__doc__:
        fn.__doc__ = escape(fn.__doc__)
    if command_options.get("epilog"):
        command_options["epilog"] = escape(command_options["epilog"])


def verb(**command_options):
    """``@verb(epilog=…)``: register a function as a verb, with the shared error handling; its help texts
    are shown as written."""
    def register(fn):
        _literal(fn, command_options)
        return app.command(**command_options)(handle_errors(fn))
    return register


# --- inputs and outputs: the API's steps (one home), a spinner around loading -----------------------------
def spec_inputs(role, spec):
    return api.spec_inputs(role, spec)


def guard(inputs, outputs) -> None:
    api.guard(inputs, outputs)


def resolve_threads(threads):
    return api.resolve_threads(threads)


def load(spec: str, weights: str | None = None, shape: list[str] | None = None, engines: bool = False):
    with err.status(f"loading {spec}", spinner="dots"):
        return api.load(spec, weights, shape, engines=engines)


def write_report(json_path: Path | None, data: dict, *, inputs=(), outputs=(), threads: int | None = None) -> None:
    """The JSON report, with its provenance block (version, command, time, file hashes, machine)."""
    if not json_path:
        return
    from ..artifacts.files import write_json
    from ..artifacts.provenance import provenance

    state = api.current()
    command, params = state.verb, state.params
    data = dict(data)
    data["provenance"] = provenance(list(inputs), list(outputs), command=command, params=params, threads=threads)
    write_json(json_path, data)


def finish(report, json_path: Path | None, *, inputs=(), outputs=(), threads: int | None = None,
           extra: dict | None = None) -> None:
    """The end of a judging verb: the JSON report when asked, the one-line verdict, exit 1 when not passed
    (a report with ``accepted``, quantize's, exits 0 on a POOR file the user allowed; its JSON still says
    ``"passed": false``)."""
    write_report(json_path, {**report.to_dict(), **(extra or {})}, inputs=inputs, outputs=outputs, threads=threads)
    typer.echo(report.summary())
    if not getattr(report, "accepted", report.passed):
        raise typer.Exit(1)


def show_failed_check(error: CheckFailedError, json_path: Path | None, *, inputs=(), threads=None) -> None:
    """Before a failed export/fuse exits 1: the comparison table, and the JSON report when asked."""
    from ..harness.report import print_compare

    failed = getattr(error, "report", None)
    if failed is not None and failed.check is not None:
        print_compare(failed.check, out)
        write_report(json_path, failed.to_dict(), inputs=inputs, threads=threads)
