"""The typer app every verb module registers on, and what the verbs share: the consoles, error handling
(one line, an exit code), loading a model spec, path guarding, and the end of a judging verb.

Exit codes: 0 ok · 1 a check failed · 2 bad input or usage · 3 a needed dependency or device is missing ·
4 internal error.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .._version import __version__
from ..errors import EXIT_BAD_INPUT, EXIT_INTERNAL, CheckFailedError, DeployError, internal_error_text

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
    rich_markup_mode="rich",
)
# Pipes and CI logs get wide tables instead of rich's 80-column default, so numbers are never cut.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 170)
err = Console(stderr=True, highlight=False)

# the running verb and its parsed options, for the provenance block of its JSON report
_current: contextvars.ContextVar[tuple[str, dict]] = contextvars.ContextVar("deploy_verb", default=("", {}))
# the outputs the running verb guarded: checked again against the files a loaded model was read from
_outputs: contextvars.ContextVar[tuple] = contextvars.ContextVar("deploy_outputs", default=())
# whether the running verb was given preprocessing flags (they win over a file's stored preprocessing)
_explicit_preprocess: contextvars.ContextVar[bool] = contextvars.ContextVar("deploy_preprocess_set", default=False)


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
        token = _current.set((fn.__name__, dict(kwargs)))
        outputs_token = _outputs.set(())
        from ..calib.data import set_preprocess

        set_preprocess(None)  # each command starts from the default (the CLI may run several in one process)
        _explicit_preprocess.set(False)
        try:
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
        finally:
            _current.reset(token)
            _outputs.reset(outputs_token)

    return wrapper


def verb(**command_options):
    """``@verb(epilog=…)``: register a function as a verb, with the shared error handling."""
    def register(fn):
        return app.command(**command_options)(handle_errors(fn))
    return register


# --- inputs and outputs --------------------------------------------------------------------------------
def spec_inputs(role: str, spec: str | None) -> list[tuple[str, str | None]]:
    """What a model spec reads, as (role, path) pairs: the spec itself (an .onnx file is a path; a zoo name
    is recorded by name), and the .py of path/to/file.py:factory."""
    if spec is None:
        return []
    from ..artifacts.engine_record import sidecar_path
    from ..artifacts.spec import is_engine_spec, is_onnx_spec, split_call

    if is_onnx_spec(spec):
        return [(role, spec)]
    if is_engine_spec(spec):
        return [(role, spec), (f"{role} record", str(sidecar_path(spec)))]
    head, _ = split_call(spec)
    target = head.rpartition(":")[0]
    return [(role, spec)] + ([(f"{role} code", target)] if target.endswith(".py") else [])


def data_file(data: str | None) -> str | None:
    return data if data and data not in ("photos", "random", "auto") else None


def guard(inputs: list[tuple[str, str | os.PathLike | None]], outputs: list[tuple[str, Path | None]]) -> None:
    """Before any work: no output may be an input or another output, and every output folder is writable."""
    from ..artifacts.files import check_paths

    check_paths(inputs, outputs)
    _outputs.set((*_outputs.get(), *outputs))


def load(spec: str, weights: str | None = None, shape: list[str] | None = None, engines: bool = False):
    """Load a model spec; then check the guarded outputs again against the files it was read from
    (``pkg.module:factory`` names its source file only once imported). ``engines``: the verb takes a
    TensorRT engine (check, bench, inspect); the others work on the ONNX an engine was built from."""
    from ..artifacts.files import check_paths
    from ..artifacts.spec import is_engine_spec, load_artifact, parse_shapes
    from ..errors import BadInputError

    if is_engine_spec(spec) and not engines:
        from ..artifacts.engine_record import read_sidecar

        source = read_sidecar(spec).onnx if Path(f"{spec}.json").is_file() else "the ONNX it was built from"
        verb = _current.get()[0] or "this verb"
        raise BadInputError(f"{spec}: a TensorRT engine is a final artifact; {verb} works on {source} "
                            f"(check and bench run engines)")
    shapes = parse_shapes(shape)
    with err.status(f"loading {spec}", spinner="dots"):
        artifact = load_artifact(spec, weights=weights, shape=shapes)
    for note in artifact.notes:
        if "normalized on load" in note:
            err.print(f"note: {note}", markup=False)
    _adopt_preprocess(artifact)
    check_paths([(f"{spec} ({role})", path) for role, path in artifact.files], list(_outputs.get()))
    return artifact


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    from ..errors import BadInputError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise BadInputError(f"{flag} {text}: give numbers separated by commas, e.g. {flag} 0.5,0.5,0.5") from None


def preprocessing(preset: str | None, mean: str | None, std: str | None, scale: float | None, bgr: bool | None,
                  fit: str | None, layout: str | None, pad: int | None = None, anchor: str | None = None,
                  interp: str | None = None) -> None:
    """The command's image preprocessing from its flags (nothing given: a loaded file's stored one, else
    ImageNet's); written into the metadata of every ONNX file the command writes."""
    from ..calib.data import DataSourceError, make_preprocess_spec, set_preprocess
    from ..errors import BadInputError

    try:
        spec = make_preprocess_spec(preset, _floats(mean, "--mean"), _floats(std, "--std"), scale, bgr, fit, layout,
                                    pad, anchor, interp)
    except DataSourceError as error:
        raise BadInputError(str(error)) from None
    if spec is not None:
        set_preprocess(spec)
        _explicit_preprocess.set(True)


def _adopt_preprocess(artifact) -> None:
    from ..calib.data import PreprocessSpec, current_preprocess, set_preprocess

    stored = getattr(artifact, "preprocess", None)
    if stored is None or _explicit_preprocess.get():
        return
    try:
        spec = PreprocessSpec.from_json(stored)
    except (ValueError, KeyError, TypeError):
        err.print(f"note: {artifact.label}: its stored preprocessing is unreadable; using the default",
                  markup=False)
        return
    if current_preprocess() is None:
        set_preprocess(spec)
        err.print(f"note: preprocessing {spec.describe()}, as stored in {artifact.label}", markup=False)


def resolve_threads(threads: int | None) -> int:
    """The one --threads default of every verb: the physical cores this process may use."""
    from ..environment import default_threads
    from ..errors import BadInputError

    if threads is not None and threads < 1:
        raise BadInputError(f"--threads {threads}: must be at least 1")
    return threads or default_threads()


def data_arg(data: str, artifact) -> str | None:
    """--data as the harness takes it: None for random inputs; 'auto' → photos for one image input."""
    if data == "random":
        return None
    if data == "auto":
        spec = artifact.inputs[0]
        image_like = len(artifact.inputs) == 1 and len(spec.shape) == 4 and spec.shape[1] in (1, 3)
        return "photos" if image_like else None
    return data


def write_report(json_path: Path | None, data: dict, *, inputs=(), outputs=(), threads: int | None = None) -> None:
    """The JSON report, with its provenance block (version, command, time, file hashes, machine)."""
    if not json_path:
        return
    from ..artifacts.provenance import provenance
    from ..harness.report import write_json

    command, params = _current.get()
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
