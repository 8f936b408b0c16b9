"""`deploy pipeline`: one command from a model to the fastest proven artifact per backend.

Export (certified equal to the original) → exact passes (certified equal) → candidates (fp16 where a backend
computes in it, int8 per quantization target, pruned at each latency target, pruned+int8) → every candidate
certified on held-out data against the fp32 export → all timed interleaved on each backend, ratios to the
fp32 export measured in the same run → per backend the Pareto front and the fastest candidate within the
budget → ``manifest.json`` (validated against ``deploy/pipelines/manifest.schema.json``) and ``report.html``.

Data: ``data`` tunes (calibration, BN statistics, distillation: its first ``samples``); the certificates use
``eval_data``, or else the samples of ``data`` after those — never a sample that tuned a candidate.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts.files import umask_mode
from ..backends.cpu_sessions import CPU_RUNTIMES
from ..errors import BadInputError, DeployError, first_line
from ..harness.heldout import Budget
from ..reporting import Report
from .candidates import (
    BF16_RUNTIME,
    FP16_BACKENDS,
    QUANT_TARGETS,
    BuildContext,
    Candidate,
    attempt,
    bf16_candidate,
    build_fp32,
    build_fused,
    build_pruned,
    build_quantized,
    not_built,
    runs_on,
)
from .certify import Certifier, default_budget
from .pareto import Choice, Timing, choose

PIPELINE_BACKENDS = tuple(QUANT_TARGETS)


@dataclass
class PipelineOptions:
    backends: tuple[str, ...] = ("ort-cpu",)
    max_drop: float | None = None
    min_sqnr: float | None = None
    data: str = "photos"
    eval_data: str | None = None
    samples: int = 256  # tuning: int8 calibrates on half and its tournament/fallback score on the other half
    eval_samples: int = 100
    prune_latency: tuple[float, ...] = (0.7, 0.5)
    distil: bool | None = None  # None: distil the pruned models when --data is the user's own
    batch: int = 1
    min_time: float = 2.0
    threads: int | None = None
    command: list[str] = field(default_factory=list)

    @property
    def budget(self) -> Budget:
        return default_budget(self.max_drop, self.min_sqnr)


@dataclass
class HeldOut:
    array: np.ndarray
    labels: np.ndarray | None
    source: str
    offset: int
    description: str


@dataclass(repr=False)
class PipelineReport(Report):
    model: str
    folder: str
    options: PipelineOptions
    candidates: list[Candidate]
    timings: dict[str, dict[str, Timing]]  # backend → candidate → timing
    choices: dict[str, Choice]
    held_out: HeldOut
    tuning_samples: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    manifest: dict | None = None

    @property
    def passed(self) -> bool:
        return all(c.chosen for c in self.choices.values())

    def summary(self) -> str:
        parts = []
        for backend, c in self.choices.items():
            if c.chosen is None:
                parts.append(f"{backend}: nothing within the budget")
                continue
            t = self.timings[backend][c.chosen]
            if c.chosen == "fp32":
                parts.append(f"{backend}: fp32 (nothing within the budget is faster)")
            elif t.low <= 1 <= t.high:
                parts.append(f"{backend}: {c.chosen}, as fast as fp32 within the noise "
                             f"[{1 / t.high:.2f}–{1 / t.low:.2f}×]")
            else:
                parts.append(f"{backend}: {c.chosen} {1 / t.ratio:.2f}× faster than fp32 "
                             f"[{1 / t.high:.2f}–{1 / t.low:.2f}]")
        verdict = "PASSED" if self.passed else "FAILED"
        return (f"{verdict} pipeline {self.model}: " + "; ".join(parts)
                + f" — {self.folder}/report.html, {self.folder}/manifest.json")

    def to_dict(self) -> dict:
        return self.manifest or {}


Progress = Callable[[int, int, str], None]


def _held_out(options: PipelineOptions, shape, input_name: str, say) -> tuple[HeldOut, int]:
    """The certificates' samples (and how many tuning samples precede them in one source)."""
    from ..calib.data import DataSourceError, count_samples, load_samples, split_counts
    from ..jobs.quantize import _same_source

    samples = options.samples
    source = options.eval_data or options.data
    same = options.eval_data is None or _same_source(options.eval_data, options.data)
    offset = 0
    eval_n = options.eval_samples
    if same:
        total = count_samples(options.data, input_name)
        split = split_counts(total, samples, eval_n, minimum=8) if total else None
        if split is not None:
            samples, eval_n = split
            if samples < 16:
                raise BadInputError(f"--data {options.data}: {total} samples; the pipeline needs at least 16 to tune "
                                    f"and 8 to certify on (or give held-out data with --eval)")
            say(f"{options.data} holds {total} samples: {samples} tune, {eval_n} certify (a quarter)")
        offset = samples
    try:
        held = load_samples(source, shape, n=eval_n, offset=offset, input_name=input_name)
    except DataSourceError as err:
        raise BadInputError(f"{source}: no held-out data after the {offset} tuning samples ({err}); lower "
                            f"--samples or give held-out data with --eval") from None
    if len(held.array) < 8:
        raise BadInputError(f"{source}: {len(held.array)} held-out samples after the {offset} tuning ones; "
                            f"certificates need at least 8 (lower --samples or give --eval)")
    return HeldOut(held.array, held.labels, source, offset, held.description), samples


def fractions(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``--prune-latency``: latency fractions like 0.7,0.5, or none."""
    if text is None:
        return ()
    if not isinstance(text, str):
        return tuple(float(v) for v in text)
    if text.strip().lower() in ("none", "off", ""):
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInputError(f"--prune-latency {text}: give fractions like 0.7,0.5, or none") from None


def validate(options: PipelineOptions) -> None:
    if not options.backends:
        raise BadInputError(f"--backend: give one or more of {', '.join(PIPELINE_BACKENDS)}")
    if len(set(options.prune_latency)) != len(options.prune_latency):
        raise BadInputError("--prune-latency: each target once, e.g. 0.7,0.5")
    if not 0 < options.min_time <= 60:
        raise BadInputError(f"--min-time {options.min_time:g}: give seconds between 0 and 60")
    for b in options.backends:
        if b not in PIPELINE_BACKENDS:
            raise BadInputError(f"--backend {b}: the pipeline's candidates are ONNX files; choose from "
                                f"{', '.join(PIPELINE_BACKENDS)}")
    for t in options.prune_latency:
        if not 0 < t < 1:
            raise BadInputError(f"--prune-latency {t:g}: give fractions of the fp32 latency between 0 and 1, "
                                f"e.g. 0.7,0.5 (or none)")
    if options.samples < 16:
        raise BadInputError(f"--samples {options.samples}: give at least 16 tuning samples")
    if options.eval_samples < 8:
        raise BadInputError(f"--eval-samples {options.eval_samples}: certificates need at least 8")
    if options.batch < 1:
        raise BadInputError(f"--batch {options.batch}: must be at least 1")


def check_backends(backends: tuple[str, ...]) -> None:
    from ..backends.registry import get_runner_class
    from ..errors import MissingDependencyError

    for name in backends:
        ok, why = get_runner_class(name).available()
        if not ok:
            raise MissingDependencyError(f"backend {name} unavailable here: {why}")


def _drop_what_will_not_load(c: Candidate, work: Path, threads: int | None) -> None:
    """An int8 file made for one CPU runtime is also timed on the other, which may refuse it (OpenVINO's low-precision
    transformations crash on an ONNX Runtime file's quantized bias Add in PaddleOCR's cls head): that runtime then
    does not time it, and the report says why, instead of the whole model failing."""
    from ..backends.cpu_sessions import open_session

    if c.precision != "int8":
        return
    for backend in [b for b in c.backends if b in CPU_RUNTIMES and b != c.details.get("target")]:
        try:
            open_session(work / c.file, threads, backend)
        except DeployError as err:
            c.backends.remove(backend)
            c.details.setdefault("not_timed", {})[backend] = first_line(err).replace(str(work) + os.sep, "")


def time_candidates(backend: str, files: list[tuple[str, Path]], batch: int, min_time: float,
                    threads: int | None, tick: Callable[[str], None] | None = None,
                    shape: tuple[int | str, ...] | None = None,
                    runtimes: dict[str, str] | None = None) -> dict[str, Timing]:
    """All files on one backend, interleaved in one run; ratios to the first (the fp32 export).

    ``shape``: the model input's shape as the pipeline was given it; it fills dims the files leave free
    (an ONNX input whose height and width are dynamic, timed at the size it was certified at).
    ``runtimes``: candidates timed on another backend in the same group (bf16: ov-cpu-bf16 within ov-cpu's)."""
    from ..harness.bench import BenchConfig, run_bench
    from .candidates import load_candidate

    runtimes = {name: b for name, b in (runtimes or {}).items() if any(name == n for n, _ in files)}
    specs = [(name, load_candidate(path, shape)) for name, path in files]
    config = BenchConfig(batches=(batch,), threads=threads, min_runs=20, min_time=min_time, memory="off")
    backends = list(dict.fromkeys([backend, *runtimes.values()]))
    report = run_bench(specs, backends, config, tick, only=lambda name, b: runtimes.get(name, backend) == b)
    out = {}
    for r in report.results:
        ratio = r.ratio
        out[r.artifact] = Timing(r.stats.median * 1e3, r.stats.p90 * 1e3, 1.0 if ratio is None else ratio.ratio,
                                 1.0 if ratio is None else ratio.low, 1.0 if ratio is None else ratio.high,
                                 r.stats.n)
    return out


def run_pipeline(artifact, folder: str | Path, options: PipelineOptions, progress: Progress | None = None,
                 say: Callable[[str], None] | None = None) -> PipelineReport:
    """Build, certify, time and choose; write everything into ``folder`` (built in a temporary sibling
    and moved into place at the end, so an interrupted run leaves no half folder)."""
    from .manifest import build_manifest, write_manifest
    from .report_html import write_html

    validate(options)
    check_backends(options.backends)
    folder = Path(folder)
    check_folder(folder)
    tell = say or (lambda _msg: None)
    start = time.perf_counter()
    torch_model = artifact.kind == "torch"
    targets = list(dict.fromkeys(QUANT_TARGETS[b] for b in options.backends))
    fp16_backends = [b for b in options.backends if b in FP16_BACKENDS]
    prune_targets = options.prune_latency if torch_model else ()
    steps = 2 + (1 if fp16_backends else 0) + ("ov-cpu" in options.backends) \
        + len(targets) * (1 + len(prune_targets)) + len(prune_targets) \
        + 1 + len(options.backends)
    done = 0
    current = ["starting"]

    def step(text: str) -> None:
        nonlocal done
        current[0] = text
        (progress or (lambda *_: None))(done, steps, text)

    def advance() -> None:
        nonlocal done
        done += 1
        (progress or (lambda *_: None))(done, steps, current[0])

    def detail(msg: str) -> None:
        (progress or (lambda *_: None))(done, steps, f"{current[0]}: {msg}")

    if len(artifact.inputs) != 1:
        raise BadInputError(f"{artifact.label}: the pipeline certifies models with one input; this one has "
                            f"{len(artifact.inputs)} ({', '.join(i.name for i in artifact.inputs)})")
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    scratch = Path(tempfile.mkdtemp(prefix=".deploy-pipeline-"))
    mode = umask_mode()
    os.chmod(work, mode | ((mode & 0o444) >> 2))  # a folder as mkdir makes one: x wherever r
    try:
        input_name = artifact.inputs[0].name
        held, tuning = _held_out(options, artifact.input_shape, input_name, tell)
        labels = held.labels is not None
        distil = options.distil if options.distil is not None else options.data != "photos"
        ctx = BuildContext(work, artifact, options.data, tuning, options.budget, labels, options.threads, distil,
                           options.batch, detail)
        if torch_model and prune_targets:
            ctx.tuning_file = _tuning_file(options.data, tuning, artifact, scratch)
        notes: list[str] = []
        step("fp32: export, certified equal to the original")
        fp32 = build_fp32(ctx)
        certifier = Certifier(work / fp32.file, held.array, held.labels, options.threads)
        _check_budget_fits(options, certifier)
        advance()
        step("fused: exact passes, certified equal")
        fused = attempt(lambda: build_fused(ctx), "fused", "fp32", "fp32")
        advance()
        base = fused if fused.built else fp32
        candidates = [fp32, fused]
        if fp16_backends:
            step("fp16")
            candidates.append(attempt(lambda: build_quantized(ctx, base, "fp16", "ort-cpu", "fp16"),
                                      "fp16", "fp16", base.name))
            advance()
        else:
            candidates.append(not_built("fp16", "fp16", base.name, "ONNX Runtime's CPU provider computes float16 "
                                        "Conv/Gemm in float32 (not faster); built for ort-cuda and trt"))
        if "ov-cpu" in options.backends:
            step("bf16: OpenVINO's bf16 inference precision")
            candidates.append(attempt(lambda: bf16_candidate(ctx, base), "bf16", "bf16", base.name))
            advance()
        for target in targets:
            name = "int8" if len(targets) == 1 else f"int8-{target}"
            step(f"{name}: calibration tournament and fallback for {target}")
            candidates.append(attempt(lambda t=target, n=name: build_quantized(ctx, base, "int8", t, n),
                                      name, "int8", base.name))
            advance()
        if not torch_model:
            notes.append("pruned candidates need the PyTorch model (an ONNX file was given): none built")
            for t in options.prune_latency:
                candidates.append(not_built(f"pruned-{t:g}", "fp32", "fp32", "pruning needs the PyTorch model; "
                                            "an ONNX file was given (give the zoo name or file.py:factory)"))
        prune_backend = options.backends[0]
        for t in prune_targets:
            name = f"pruned-{t:g}"
            step(f"{name}: latency-targeted pruning on {prune_backend}")
            pruned = attempt(lambda t=t: build_pruned(ctx, t, prune_backend), name, "fp32", "fp32")
            candidates.append(pruned)
            advance()
            for target in targets:
                qname = f"{name}+int8" if len(targets) == 1 else f"{name}+int8-{target}"
                step(f"{qname}: int8 of the pruned model for {target}")
                if pruned.built:
                    candidates.append(attempt(lambda t=target, q=qname, p=pruned: build_quantized(ctx, p, "int8", t, q),
                                              qname, "int8", name))
                else:
                    candidates.append(not_built(qname, "int8", name, f"{name} was not built"))
                advance()
        for c in candidates:
            if c.built:
                c.backends = [b for b in options.backends
                              if runs_on(c, b) and (c.precision != "fp16" or b in FP16_BACKENDS)]
                _drop_what_will_not_load(c, work, options.threads)
        step(f"certificates: {sum(c.built for c in candidates)} candidates on {len(held.array)} held-out samples")
        for c in candidates:
            if c.built:
                detail(c.name)
                # an int8 file made for OpenVINO is judged as OpenVINO runs it, bf16 as OpenVINO's bf16 runs it;
                # the rest as ONNX Runtime does
                runtime = c.details.get("target") if c.precision == "int8" else None
                runtime = runtime if runtime in CPU_RUNTIMES else "ort-cpu"
                runtime = BF16_RUNTIME if c.precision == "bf16" else runtime
                if runtime != "ort-cpu":
                    c.details["certified_on"] = runtime
                c.certificate = certifier.certify(work / c.file, runtime)
                c.misses = options.budget.misses(c.certificate)
        advance()
        timings: dict[str, dict[str, Timing]] = {}
        choices: dict[str, Choice] = {}
        for backend in options.backends:
            files = [(c.name, work / c.file) for c in candidates if c.built and backend in c.backends]
            step(f"timing {len(files)} candidates interleaved on {backend}, batch {options.batch}")
            timings[backend] = time_candidates(backend, files, options.batch, options.min_time, options.threads,
                                               detail, shape=artifact.input_shape,
                                               runtimes={c.name: BF16_RUNTIME for c in candidates
                                                         if c.built and c.precision == "bf16"})
            choices[backend] = choose(backend, candidates, timings[backend])
            advance()
        for c in candidates:  # the words name the files where they will be, not the work folder
            c.changes = [x.replace(str(work), str(folder)) for x in c.changes]
            c.why_not = c.why_not.replace(str(work), str(folder)) if c.why_not else None
        report = PipelineReport(artifact.label, str(folder), options, candidates, timings, choices, held, tuning,
                                time.perf_counter() - start, notes)
        report.manifest = build_manifest(report, artifact)
        write_manifest(report.manifest, work / "manifest.json")
        write_html(report, work / "report.html")
        _move_into_place(work, folder)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _check_budget_fits(options: PipelineOptions, certifier: Certifier) -> None:
    """A top-1 budget (given, or the default) on an output that has no top-1 would put every candidate, fp32
    included, over budget: refuse it before any candidate is built, naming the budget that fits."""
    if options.budget.max_drop is None or certifier.has_top1:
        return
    shape = "×".join(str(d) for d in certifier.reference.shape[1:])
    given = "--max-drop" if options.max_drop is not None else "the default budget (top-1 points)"
    raise BadInputError(f"{given} needs a classifier output (samples × classes); the first output is "
                        f"{shape} per sample: give the budget as --min-sqnr DB (centred SQNR against fp32, e.g. 25)")


def _tuning_file(data: str, tuning: int, artifact, scratch: Path) -> Path:
    """The first ``tuning`` samples of ``data``, preprocessed, as one .npy without labels: what pruning may read."""
    from ..calib.data import DataSourceError, load_samples

    try:
        samples = load_samples(data, artifact.input_shape, n=tuning, input_name=artifact.inputs[0].name)
    except DataSourceError as err:
        raise BadInputError(str(err)) from None
    path = scratch / "tuning.npy"
    np.save(path, samples.array)
    return path


def check_folder(folder: Path) -> None:
    """-o DIR: new, empty, or an earlier pipeline's (replaced whole); never a folder of other files."""
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"-o {folder}: a file is there; give a folder for the pipeline's artifacts")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "manifest.json").is_file():
        raise BadInputError(f"-o {folder}: the folder holds other files and no manifest.json of an earlier "
                            f"pipeline; give a new or empty folder")
    if not folder.parent.exists():
        raise BadInputError(f"-o {folder}: its parent folder {folder.parent} does not exist")


def _move_into_place(work: Path, folder: Path) -> None:
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{time.time_ns()}")
        folder.rename(old)
    work.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
