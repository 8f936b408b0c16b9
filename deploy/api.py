"""The public API: every verb as a function, the same code the CLI runs (``import deploy`` re-exports them).

Each function takes what the CLI takes — a model as an ``nn.Module`` (give ``shape``), a spec string (zoo name,
``module:factory``, ``file.py:factory``) or a path to an ``.onnx`` file — with the CLI's options as keyword
arguments under the same names and defaults, and returns the report the CLI prints: ``.passed`` where the verb
judges, ``.summary()`` (the CLI's last line, also the ``repr``) and ``.to_dict()`` (its ``--json``, without the
provenance block). Errors raise :class:`deploy.errors.DeployError` subclasses (``BadInputError``,
``MissingDependencyError``, ``CheckFailedError``); nothing here exits the process. A verdict of FAILED is a
report with ``passed`` False, except where the CLI writes no file (export, fuse): those raise
``CheckFailedError`` with the report on ``error.report``.

Per call, like one CLI command: inputs and outputs are guarded before any work (an output may not be an input;
inputs are never overwritten), the image preprocessing is the one given (else the one stored in the ONNX file,
else ImageNet's) and ends with the call, and notes go to the ``deploy`` logger (the CLI prints them).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .artifacts.artifact import Artifact
from .artifacts.engine_record import read_sidecar, sidecar_path
from .artifacts.files import check_paths
from .artifacts.inputs import adopt_stored_preprocess
from .artifacts.spec import (
    is_engine_spec,
    is_ir_spec,
    is_onnx_spec,
    load_artifact,
    module_artifact,
    parse_shapes,
    split_call,
)
from .calib.data import DataSourceError, make_preprocess_spec, set_preprocess
from .environment import default_threads
from .errors import BadInputError, MissingDependencyError

log = logging.getLogger("deploy")

Model = str | os.PathLike | nn.Module | Artifact
Shape = tuple[int, ...] | str | Sequence[str] | dict[str, Sequence[int]] | None
Progress = Callable[[str], None] | None

__all__ = ["bench", "build", "check", "debug", "export", "fuse", "pipeline", "prune", "quantize", "sweep", "verify"]


# ------------------------------------------------------------------------------------------ one call

@dataclass
class Call:
    """One verb's run: what it guarded, whether preprocessing was given, where its notes go."""

    verb: str = ""
    params: dict = field(default_factory=dict)
    inputs: list[tuple[str, Any]] = field(default_factory=list)
    outputs: list[tuple[str, Any]] = field(default_factory=list)
    explicit_preprocess: bool = False
    notify: Callable[[str], None] = log.info


_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("deploy_call", default=None)


@contextlib.contextmanager
def call(verb: str, params: dict | None = None, notify: Callable[[str], None] | None = None) -> Iterator[Call]:
    """A fresh call (the CLI opens one per command; each API function opens one unless inside another)."""
    state = Call(verb, dict(params or {}), notify=notify or log.info)
    token = _call.set(state)
    set_preprocess(None)  # each call starts from the default (several may run in one process)
    try:
        yield state
    finally:
        set_preprocess(None)
        _call.reset(token)


def current() -> Call:
    state = _call.get()
    return state if state is not None else Call()


def _verb(fn):
    """Run an API function inside its own call, unless the CLI (or another verb) already opened one."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _call.get() is not None:
            return fn(*args, **kwargs)
        with call(fn.__name__, kwargs):
            return fn(*args, **kwargs)
    return wrapper


# ------------------------------------------------------------------------------------------ shared steps

def spec_inputs(role: str, spec: Model | None) -> list[tuple[str, str | None]]:
    """What a model reads, as (role, path) pairs: an .onnx file, an engine and its record, the .py of
    path/to/file.py:factory; a zoo name is recorded by name; a module in memory reads no file."""
    if spec is None or isinstance(spec, nn.Module | Artifact):
        return []
    spec = str(spec)
    if is_onnx_spec(spec):
        return [(role, spec)]
    if is_engine_spec(spec):
        return [(role, spec), (f"{role} record", str(sidecar_path(spec)))]
    if is_ir_spec(spec):
        return [(role, spec), (f"{role} weights", str(Path(spec).with_suffix(".bin")))]
    head, _ = split_call(spec)
    target = head.rpartition(":")[0]
    return [(role, spec)] + ([(f"{role} code", target)] if target.endswith(".py") else [])


def data_file(data: str | None) -> str | None:
    """--data as a path (for guarding), or None for the built-in sources."""
    return data if data and str(data) not in ("photos", "random", "auto") else None


def guard(inputs: list[tuple[str, Any]], outputs: list[tuple[str, Any]]) -> None:
    """Before any work: no output may be an input or another output, and every output folder is writable."""
    state = current()
    check_paths([*state.inputs, *inputs], [*state.outputs, *outputs])  # with what the call guarded before
    state.inputs.extend(inputs)
    state.outputs.extend(outputs)


def shapes_of(shape: Shape):
    """``shape`` as the loaders take it: (1, 3, 224, 224), "1,3,224,224", ["x=1,3,224,224", …] or a dict."""
    if shape is None:
        return None
    if isinstance(shape, str):
        return parse_shapes([shape])
    if isinstance(shape, dict):
        return {name: tuple(int(d) for d in dims) for name, dims in shape.items()}
    shape = list(shape)
    if shape and all(isinstance(d, int) for d in shape):
        return {None: tuple(shape)}
    return parse_shapes([str(s) for s in shape])


def load(model: Model, weights: str | os.PathLike | None = None, shape: Shape = None, engines: bool = False,
         progress: Progress = None) -> Artifact:
    """A model as an :class:`Artifact`; then the guarded outputs are checked again against the files it was
    read from (``pkg.module:factory`` names its source file only once imported). ``engines``: the verb takes a
    TensorRT engine or an OpenVINO IR (check, bench); the others work on the ONNX file it was made from."""
    if isinstance(model, Artifact):
        artifact = model
    elif isinstance(model, nn.Module):
        if weights is not None:
            raise BadInputError("weights apply to a model spec; load them into your module before passing it")
        if shape is None:
            raise BadInputError(f"{type(model).__name__}: give the input shape of a module, e.g. shape=(1, 3, 224, "
                                f"224)")
        artifact = module_artifact(model, shapes_of(shape))
    else:
        spec = str(model)
        if is_engine_spec(spec) and not engines:
            source = read_sidecar(spec).onnx if Path(f"{spec}.json").is_file() else "the ONNX it was built from"
            raise BadInputError(f"{spec}: a TensorRT engine is a final artifact; {current().verb or 'this verb'} "
                                f"works on {source} (check and bench run engines)")
        if is_ir_spec(spec) and not engines:
            raise BadInputError(f"{spec}: an OpenVINO IR is a final artifact; {current().verb or 'this verb'} works "
                                f"on the ONNX file it was converted from (check and bench run IRs on ov-cpu)")
        if progress:
            progress(f"loading {spec}")
        artifact = load_artifact(spec, weights=None if weights is None else str(weights), shape=shapes_of(shape))
    for note in artifact.notes:
        if "normalized on load" in note:
            current().notify(f"note: {note}")
    _adopt_preprocess(artifact)
    check_paths([(f"{artifact.label} ({role})", path) for role, path in artifact.files], list(current().outputs))
    return artifact


def _floats(text: str | Sequence[float] | None, flag: str) -> tuple[float, ...] | None:
    if text is None or not isinstance(text, str):
        return None if text is None else tuple(float(v) for v in text)
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise BadInputError(f"{flag} {text}: give numbers separated by commas, e.g. {flag} 0.5,0.5,0.5") from None


def preprocessing(preprocess: str | None = None, mean=None, std=None, scale: float | None = None,
                  bgr: bool | None = None, resize: str | None = None, layout: str | None = None, pad: int | None = None,
                  anchor: str | None = None, interp: str | None = None) -> None:
    """The call's image preprocessing from its options (none given: a loaded file's stored one, else
    ImageNet's); written into the metadata of every ONNX file the call writes."""
    try:
        spec = make_preprocess_spec(preprocess, _floats(mean, "--mean"), _floats(std, "--std"), scale, bgr, resize,
                                    layout, pad, anchor, interp)
    except DataSourceError as error:
        raise BadInputError(str(error)) from None
    if spec is not None:
        set_preprocess(spec)
        current().explicit_preprocess = True


def _adopt_preprocess(artifact: Artifact) -> None:
    if not current().explicit_preprocess:  # flags given to this call win over a file's stored preprocessing
        adopt_stored_preprocess(artifact, current().notify)


def resolve_threads(threads: int | None) -> int:
    """The one ``threads`` default of every verb: the physical cores this process may use."""
    if threads is not None and threads < 1:
        raise BadInputError(f"--threads {threads}: must be at least 1")
    return threads or default_threads()


def data_arg(data: str | None, artifact: Artifact) -> str | None:
    """--data as the harness takes it: None for random inputs; 'auto' → photos for one image input."""
    if data == "random" or data is None:
        return None
    if data == "auto":
        spec = artifact.inputs[0]
        image_like = len(artifact.inputs) == 1 and len(spec.shape) == 4 and spec.shape[1] in (1, 3)
        return "photos" if image_like else None
    return str(data)


PREPROCESS_KEYS = ("preprocess", "mean", "std", "scale", "bgr", "resize", "layout", "pad", "anchor", "interp")


def _preprocess(options: dict) -> None:
    preprocessing(**{k: options.get(k) for k in PREPROCESS_KEYS})


# ------------------------------------------------------------------------------------------ the verbs

@_verb
def export(model: Model, output: str | os.PathLike, *, weights=None, shape: Shape = None, dynamic: str | None = None,
           static: bool = False, opset: int = 17, simplify: bool = True, exporter: str = "torchscript",
           verify: bool = True, data: str = "auto", samples: int = 4, threads: int | None = None,
           format: str = "auto", progress: Progress = None, **preprocess):
    """`deploy export`: torch → one checked, simplified ONNX file, verified in ONNX Runtime against PyTorch
    (or an ONNX file converted to ``opset``); ``format="openvino"`` (or ``output`` NAME.xml): an OpenVINO IR from
    that proven ONNX file, checked equal to it on ov-cpu. Raises ``CheckFailedError`` (no file written) on a
    mismatch."""
    output = Path(output)
    from .artifacts.onnx_export import parse_dynamic
    from .jobs.export import export_onnx, export_openvino, resolve_format

    axes = parse_dynamic(dynamic, static)
    _preprocess(preprocess)
    fmt = resolve_format(format, output)
    written = [("-o", output)] + ([("-o (IR weights)", output.with_suffix(".bin"))] if fmt == "openvino" else [])
    guard([*spec_inputs("MODEL", model), ("--weights", weights), ("--data", data_file(data))], written)
    threads = resolve_threads(threads)
    artifact = load(model, weights, shape, progress=progress)
    if fmt == "openvino":
        if not verify:
            raise BadInputError("--format openvino always checks the IR against its ONNX file; drop --no-verify")
        options = {"opset": opset, "dynamic": axes, "simplify": simplify, "exporter": exporter}
        return export_openvino(artifact, output, samples=samples, data=data_arg(data, artifact), threads=threads,
                               progress=progress, **(options if artifact.kind == "torch" else {}))
    return export_onnx(artifact, output, opset=opset, dynamic=axes, simplify=simplify, exporter=exporter,
                       verify=verify, verify_samples=samples, verify_data=data_arg(data, artifact), threads=threads,
                       progress=progress)


@_verb
def fuse(model: Model, output: str | os.PathLike, *, weights=None, shape: Shape = None, passes: str | None = None,
         dynamic: str | None = None, verify: bool = True, data: str = "auto", samples: int = 8,
         tol: Sequence[str] | None = None, threads: int | None = None, progress: Progress = None, **preprocess):
    """`deploy fuse`: exact passes (conv-BN, structural reparameterization, HardSwish), proven equal within
    fp32 tolerance. Raises ``CheckFailedError`` (no file written) when the result is not equivalent."""
    output = Path(output)
    from .artifacts.onnx_export import parse_dynamic
    from .jobs.fuse import fuse_artifact, parse_passes

    axes = parse_dynamic(dynamic)
    _preprocess(preprocess)
    guard([*spec_inputs("MODEL", model), ("--weights", weights), ("--data", data_file(data))], [("-o", output)])
    threads = resolve_threads(threads)
    artifact = load(model, weights, shape, progress=progress)
    if dynamic is not None and artifact.kind == "onnx":
        raise BadInputError(f"{artifact.label}: --dynamic applies when fuse exports a model spec; an ONNX file keeps "
                            f"the free axes it has (re-export it with deploy export --dynamic)")
    names = parse_passes(passes, artifact.kind)
    return fuse_artifact(artifact, output, passes=names, verify=verify, samples=samples,
                         data=data_arg(data, artifact), dynamic=axes, threads=threads, overrides=list(tol or []),
                         progress=progress)


@_verb
def quantize(model: Model, output: str | os.PathLike, *, precision: str = "int8", data: str = "photos",
             samples: int = 128, method: str = "auto", target: str = "ort-cpu", keep_float: str | None = None,
             max_drop: float | None = None, min_sqnr: float | None = None, eval_data: str | None = None,
             eval_samples: int = 64, run_batch: int | None = None, trt_cache=None, weights=None,
             shape: Shape = None, threads: int | None = None, keep_failed: bool = False, allow_poor: bool = False,
             mixed: bool = True, tier2: bool = True, placement: str = "auto", time_budget: float | None = None,
             progress: Progress = None, **preprocess):
    """`deploy quantize`: int8 (Q/DQ from calibration) or fp16 in the graph, judged against fp32 on held-out
    data; returns the report (``passed`` False and no file unless ``keep_failed``/``allow_poor`` when the
    result misses its preset or budget)."""
    output = Path(output)
    from .jobs.quantize import QuantizeOptions, quantize_artifact, table_path_for

    _preprocess(preprocess)
    guard([*spec_inputs("MODEL", model), ("--weights", weights), ("--data", data_file(data)),
           ("--eval", data_file(eval_data))],
          [("-o", output), ("ranges table", table_path_for(output) if precision == "int8" else None),
           ("--trt-cache", trt_cache)])
    threads = resolve_threads(threads)
    artifact = load(model, weights, shape, progress=progress)
    options = QuantizeOptions(
        precision=precision, target=target, method=method, calib=data, eval_data=eval_data, samples=samples,
        eval_samples=eval_samples, counts_given=(samples, eval_samples) != (128, 64), batch=run_batch,
        max_drop=max_drop, min_sqnr=min_sqnr, trt_cache=trt_cache, threads=threads,
        keep_float=tuple(k for k in (keep_float or "").split(",") if k.strip()), keep_failed=keep_failed,
        allow_poor=allow_poor, aim_preset=mixed, tier2=tier2, time_budget=time_budget, placement=placement)
    return quantize_artifact(artifact, output, options, progress=progress)


@_verb
def prune(model: Model, output: str | os.PathLike, *, ratio: float | None = None, macs: float | None = None,
          latency: float | None = None, importance: str = "l2", round_to: str | int = "auto",
          ignore: Sequence[str] | None = None, backend: str = "ort-cpu", batch: int = 8, data: str = "auto",
          samples: int = 64, recalibrate: bool = True, finetune: str | None = None, epochs: int | None = None,
          temperature: float = 4.0, eval_data: str | None = None, measure: bool = True, weights=None,
          shape: Shape = None, threads: int | None = None, progress: Progress = None, **preprocess):
    """`deploy prune`: structured channel pruning to one target (``ratio``, ``macs`` or ``latency``), BN
    re-estimated, optionally distilled, exported (verified) with its weights and pruning record beside it."""
    output = Path(output)
    from .backends import get_runner_class
    from .jobs.prune import PruneJobOptions, prune_artifact, safetensors_path_for
    from .jobs.prune_search import PruneSettings, PruneTarget, parse_round_to

    given = [(k, v) for k, v in (("ratio", ratio), ("macs", macs), ("latency", latency)) if v is not None]
    if len(given) != 1:
        raise BadInputError("give exactly one target: --ratio R, --macs F or --latency F"
                            + (f" (got {', '.join('--' + k for k, _ in given)})" if given else ""))
    if batch < 1:
        raise BadInputError(f"--batch {batch}: must be at least 1")
    if samples < 2:
        raise BadInputError(f"--samples {samples}: BN statistics need at least 2 samples")
    if epochs is not None and epochs < 1:
        raise BadInputError(f"--epochs {epochs}: must be at least 1")
    if epochs is not None and not finetune:
        raise BadInputError("--epochs applies to --finetune DATA; give the data to distil on")
    try:
        runner = get_runner_class(backend)
    except KeyError as error:
        raise BadInputError(f"--backend {backend}: {str(error).strip(chr(39))}") from None
    if measure or latency is not None:  # before any work: the timing would fail at the end
        ok, why = runner.available()
        if not ok:
            raise MissingDependencyError(f"--backend {backend} unavailable here: {why} (or --no-measure with "
                                         f"--ratio/--macs)")
    if output.suffix.lower() != ".onnx":
        raise BadInputError(f"-o {output}: give an .onnx path (the .safetensors goes beside it)")
    _preprocess(preprocess)
    guard([*spec_inputs("MODEL", model), ("--weights", weights), ("--data", data_file(data)),
           ("--finetune", data_file(finetune)), ("--eval", data_file(eval_data))],
          [("-o", output), ("weights", safetensors_path_for(output))])
    threads = resolve_threads(threads)
    artifact = load(model, weights, shape, progress=progress)
    settings = PruneSettings(PruneTarget(*given[0]), importance=importance, round_to=parse_round_to(round_to),
                             ignore=tuple(ignore or ()), backend=backend, batch=batch, threads=threads)
    options = PruneJobOptions(settings, data=data_arg(data, artifact), samples=samples, recalibrate=recalibrate,
                              finetune=finetune, epochs=epochs, temperature=temperature, eval_data=eval_data,
                              measure=measure)
    return prune_artifact(artifact, Path(output), options, progress=progress)


@_verb
def check(reference: Model, candidate: Model, *, weights=None, weights_b=None, shape: Shape = None,
          backend_a: str | None = None, backend_b: str | None = None, precision: str = "fp32",
          tol: Sequence[str] | None = None, data: str = "auto", samples: int = 8, run_batch: int | None = None,
          seed: int = 0, threads: int | None = None, tick: Callable[[], None] | None = None, **preprocess):
    """`deploy check`: both artifacts on the same inputs, every output judged by the ``precision`` preset
    (and ``tol`` overrides); the report's ``passed`` is the verdict."""
    from .backends import get_runner_class
    from .harness.check import check_artifacts

    _preprocess(preprocess)
    guard([*spec_inputs("REFERENCE", reference), *spec_inputs("CANDIDATE", candidate), ("--weights", weights),
           ("--weights-b", weights_b), ("--data", data_file(data))], [])
    for name in (backend_a, backend_b):
        if name:
            get_runner_class(name)
    threads = resolve_threads(threads)
    a = load(reference, weights, shape, engines=True)
    b = load(candidate, weights_b, shape, engines=True)
    return check_artifacts(a, b, backend_reference=backend_a, backend_candidate=backend_b, samples=samples,
                           batch=run_batch, data=data_arg(data, a), seed=seed, precision=precision,
                           overrides=list(tol or []), threads=threads, tick=tick)


@_verb
def debug(reference: Model, candidate: Model, *, weights=None, shape: Shape = None, backend_a: str | None = None,
          backend_b: str | None = None, precision: str = "fp32", data: str = "auto", samples: int = 8,
          run_batch: int | None = None, seed: int = 0, impact: int = 64, threads: int | None = None,
          progress: Progress = None, **preprocess):
    """`deploy debug`: where two artifacts diverge — every aligned intermediate tensor, accumulated and local
    error, the first divergence. Returns the report; its ``state`` (for extracting a reproducer) is on
    ``report.state``."""
    from .jobs.debug import debug_artifacts

    _preprocess(preprocess)
    guard([*spec_inputs("REFERENCE", reference), *spec_inputs("CANDIDATE", candidate), ("--weights", weights),
           ("--data", data_file(data))], [])
    threads = resolve_threads(threads)
    a = load(reference, weights, shape, progress=progress)
    b = load(candidate, None, shape, progress=progress)
    report, state = debug_artifacts(a, b, backend_reference=backend_a, backend_candidate=backend_b or "ort-cpu",
                                    samples=samples, batch=run_batch, data=data_arg(data, a), seed=seed,
                                    precision=precision, threads=threads, impact=impact,
                                    progress=progress or (lambda _m: None))
    report.state = state
    return report


@_verb
def bench(*artifacts: Model, weights=None, weights_b=None, shape: Shape = None, backend: str = "ort-cpu",
          batch: str | int = "1", threads: int | None = None, warmup: str = "auto", min_runs: int = 30,
          min_time: float = 3.0, max_time: float = 60.0, include_copies: bool = False, cuda_graphs: bool = False,
          per_artifact: bool = False, ort_spinning: bool = False, gap_ms: float = 10.0, memory: str = "fresh",
          max_ratio: float | None = None, progress: Progress = None):
    """`deploy bench`: latency of one or more artifacts on each backend, interleaved, with ratios to the first
    and their 95 % intervals; ``max_ratio`` makes it a judging verb (``passed``)."""
    from .backends import parse_backend_list
    from .harness.bench import BenchConfig, Warmup, parse_batches, run_bench

    if not artifacts:
        raise BadInputError("give at least one artifact to bench")
    if min_runs < 1 or min_time < 0 or max_time <= 0 or gap_ms < 0:
        raise BadInputError("--min-runs must be ≥ 1, --min-time ≥ 0, --max-time > 0 and --gap-ms ≥ 0")
    if max_ratio is not None and max_ratio <= 0:
        raise BadInputError(f"--max-ratio {max_ratio}: must be > 0 (a ratio of latencies, e.g. 1.05)")
    if weights_b is not None and len(artifacts) < 2:
        raise BadInputError("--weights-b loads into the second artifact; only one was given")
    inputs = [pair for i, spec in enumerate(artifacts) for pair in spec_inputs(f"ARTIFACT {i + 1}", spec)]
    guard(inputs + [("--weights", weights), ("--weights-b", weights_b)], [])
    backends = parse_backend_list(backend)
    threads = resolve_threads(threads)
    config = BenchConfig(batches=parse_batches(str(batch)), threads=threads, warmup=Warmup.parse(warmup),
                         min_runs=min_runs, min_time=min_time, max_time=max_time, include_copies=include_copies,
                         cuda_graphs=cuda_graphs, per_artifact=per_artifact, ort_spinning=ort_spinning,
                         gap=gap_ms / 1e3, memory=memory)
    checkpoints = {0: weights, 1: weights_b}
    specs = [(_label(spec), load(spec, checkpoints.get(i), shape, engines=True, progress=progress))
             for i, spec in enumerate(artifacts)]
    report = run_bench(specs, backends, config, tick=progress)
    report.max_ratio = max_ratio
    return report


def _label(model: Model) -> str:
    if isinstance(model, Artifact):
        return model.label
    return type(model).__name__ if isinstance(model, nn.Module) else str(model)


@_verb
def build(model: str | os.PathLike, output: str | os.PathLike | None = None, *, precision: str = "auto",
          ranges=None, min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 8,
          profile: Sequence[str] | None = None, timing_cache=None, workspace: int = 4096,
          opt_level: int = 3, tf32: bool = False, dry_run: bool = False, api: int | None = None,
          progress: Progress = None):
    """`deploy build`: a TensorRT engine (and its record) from an ONNX file. ``dry_run`` returns the plan
    (what would be built, for TensorRT ``api``) without TensorRT; a real build needs it."""
    from .backends.trt_build import BuildOptions, build_engine, parse_profile, plan_build
    from .gpu import device_facts, import_tensorrt, require_tensorrt, tensorrt_major

    model = Path(model)
    trt = None
    if not dry_run:
        if api is not None:
            raise BadInputError("--api applies to --dry-run; a real build uses the installed TensorRT")
        trt = require_tensorrt()  # before any work, naming what is missing
    output = Path(output) if output is not None else model.with_suffix(".engine")
    options = BuildOptions(precision=precision, ranges=ranges, batch=(min_batch, opt_batch or max_batch, max_batch),
                           profile=parse_profile(profile), timing_cache=timing_cache, workspace_mib=workspace,
                           opt_level=opt_level, tf32=tf32)
    # the timing cache is read and rewritten: it may be neither the model nor the ranges table
    guard([("MODEL", model), ("--ranges", ranges)],
          [("--timing-cache", timing_cache)] if dry_run else [("-o", output), ("--timing-cache", timing_cache)])
    if dry_run:
        installed = import_tensorrt()
        major = api or (tensorrt_major(installed) if installed is not None else 11)
        plan = plan_build(model, options, major, device_facts(),
                          installed.__version__ if installed is not None else None)
        return plan
    if progress:
        progress(f"building {output} with TensorRT {trt.__version__} (timing kernels)")
    return build_engine(model, output, options, log=progress or (lambda _m: None))


@_verb
def pipeline(model: Model, output: str | os.PathLike, *, weights=None, shape: Shape = None,
             backend: str = "ort-cpu", max_drop: float | None = None, min_sqnr: float | None = None,
             data: str = "photos", eval_data: str | None = None, samples: int = 256, eval_samples: int = 100,
             prune_latency: str | Sequence[float] | None = "0.7,0.5", distil: str | None = None, timing_batch: int = 1,
             min_time: float = 3.0, threads: int | None = None, command: Sequence[str] | None = None,
             progress: Callable[[int, int, str], None] | None = None, say: Progress = None, **preprocess):
    """`deploy pipeline`: every candidate (export, fused, pruned, int8, fp16, …) made, certified on held-out
    data against one budget, timed side by side per backend; the fastest that passes is chosen, and
    ``output/manifest.json`` plus ``report.html`` are written for `deploy verify`."""
    from .pipelines.run import PipelineOptions, check_backends, check_folder, fractions, run_pipeline, validate

    threads = resolve_threads(threads)
    backends = tuple(b.strip() for b in backend.split(",") if b.strip())
    state = current()
    options = PipelineOptions(backends=backends, max_drop=max_drop, min_sqnr=min_sqnr, data=data,
                              eval_data=eval_data, samples=samples, eval_samples=eval_samples,
                              prune_latency=fractions(prune_latency), distil=distil, batch=timing_batch,
                              min_time=min_time, threads=threads,
                              command=list(command or ["deploy.pipelines", _label(model)]))
    validate(options)
    check_backends(options.backends)
    check_folder(output)
    _preprocess(preprocess)
    guard(spec_inputs("model", model) + [("weights", weights), ("data", data_file(data)),
                                         ("eval", data_file(eval_data))],
          [("-o", output / "manifest.json" if output.is_dir() else output)])
    artifact = load(model, weights, shape)
    return run_pipeline(artifact, output, options, progress=progress,
                        say=say or (lambda text: state.notify(f"note: {text}")))


@_verb
def verify(manifest: str | os.PathLike, *, max_slowdown: float = 0.15, latency: bool = True,
           all_latency: bool = False, data: str | None = None, min_time: float = 2.0, threads: int | None = None,
           progress: Progress = None):
    """`deploy verify`: a pipeline's manifest proven again here — file hashes, every certificate re-judged on
    the recorded held-out data, and the chosen artifacts timed against fp32 (ratios)."""
    from .pipelines.verify import VerifyOptions, verify_manifest

    threads = resolve_threads(threads) if threads is not None else None  # None: the manifest's (capped here)
    guard([("manifest", manifest), ("data", data_file(data))], [])
    return verify_manifest(manifest, VerifyOptions(max_slowdown, data, latency, all_latency, min_time, threads),
                           say=progress)


@_verb
def sweep(sweep_file: str | os.PathLike, *, output: str | os.PathLike | None = None, ray: str = "local",
          workers: int = 2, threads: int | None = None, dry_run: bool = False,
          progress: Callable[[int, int, str], None] | None = None):
    """`deploy sweep`: the matrix in a TOML file (models × verbs × backends), each cell a child `deploy`
    process on Ray or a local pool; finished cells are skipped on a re-run. ``dry_run`` returns the plan."""
    from .sweeps.matrix import load_sweep
    from .sweeps.run import SweepReport, _import_ray, run_sweep

    plan = load_sweep(sweep_file, output)
    guard([("SWEEP.toml", sweep_file)], [])
    if dry_run:
        return plan
    if ray != "off":
        _import_ray()  # the install hint before anything starts
    return SweepReport(plan, run_sweep(plan, ray=ray, workers=workers, progress=progress, threads=threads))
