"""`deploy quantize`: calibrate, then write Q/DQ (int8) or cast (fp16) into the ONNX graph, and prove it.

Int8 flow: plan the Q/DQ placement for the target → run the fp32 model once over the
calibration data with every planned tensor as an extra output, collecting histograms (one pass, bounded
memory) → derive ranges per method → insert Q/DQ → score each candidate on held-out data against the
fp32 model (SQNR, mean-centred SQNR, top-1 agreement, accuracy when the data has labels). ``auto`` scores
every method from that one pass and keeps the best. A budget (``max_drop`` / ``min_sqnr``) that the
result misses starts the sensitivity search: each quantized layer is kept in float alone, the layers are
ranked by what that recovers, and the most sensitive are kept in float until the budget holds.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..artifacts.artifact import Artifact
from ..artifacts.files import output_path, staged_output
from ..artifacts.onnx_export import onnx_output_path, save_onnx
from ..backends.cpu_sessions import CPU_RUNTIMES, open_session
from ..backends.ort_graph import op_counts, round_trips
from ..calib.data import DataSourceError, load_samples
from ..calib.observers import METHODS, collect_histograms, compute_ranges
from ..calib.table import RangesTable, fingerprint_arrays, write_trt_cache
from ..errors import BadInputError
from ..harness.bench import BenchConfig, Warmup, interleave, warm_up
from ..harness.compare import PRESETS, diff_output
from ..harness.heldout import Budget, HeldOut, top1_drop
from ..harness.stats import paired_ratio, ratio_verdict
from ..ort import cpu_session, optimized_graph, run_function, session_timer
from ..passes.bias_correction import fold_corrections, measure_corrections
from ..passes.equalize import Equalization, equalize
from ..passes.onnx_activations import expand_hard_activations, onnx_fuse_hardswish
from ..passes.onnx_fuse import AFFINE_OPS, onnx_fuse_bn
from ..passes.onnx_graph import fold_shape_constants
from ..passes.qdq import (
    ELEMENTWISE_OPS,
    OWN_RANGE_OPS,
    PLACEMENTS,
    TARGETS,
    UNARY_OPS,
    QdqPlan,
    QuantizeError,
    divisions_to_products,
    get_target,
    insert_qdq,
    plan_qdq,
    resolve_keep_float,
    tensor_unit,
    with_outputs,
)
from ..reporting import Report
from .export import export_onnx

PRECISIONS = ("int8", "fp16")
METHOD_CHOICES = (*METHODS, "auto")
FINALISTS = 2  # tournament methods scored on all the held-out data
CALIBRATION_BATCH, SCORING_BATCH = 4, 8  # fastest here for ResNet-50: many extra outputs favour small batches
HISTOGRAM_SAMPLES = 1 << 17  # per tensor and batch: min/max stay exact, the histogram takes a subsample
TOURNAMENT = tuple(m for m in METHODS if m != "percentile")  # "percentile" is percentile-99.99 by another name
# Mixed precision aiming at the preset stops before more than this share of the quantizable layers' MACs is
# back in float: past it the file is mostly fp32 and no faster (measured: resnet50 with 53 of 54 layers in
# float met the preset at ×1.01 of fp32's latency, after 256 s of search).
MAX_FLOAT_MACS = 0.25


@dataclass
class QuantizeOptions:
    precision: str = "int8"
    target: str = "ort-cpu"
    method: str = "auto"
    calib: str = "photos"
    eval_data: str | None = None  # held-out data; default: the calibration source, after the calibration samples
    samples: int = 128
    eval_samples: int = 64
    counts_given: bool = False  # the user set --samples/--eval-samples: never scaled down to fit the data
    allow_poor: bool = False  # write (exit 0, loudly) an int8/fp16 that misses `deploy check`'s preset
    measure: bool = True  # ort-cpu: time the written int8 against fp32 (interleaved, ~1 s) and say when it is slower
    batch: int | None = None  # samples per run; default CALIBRATION_BATCH / SCORING_BATCH
    keep_float: tuple[str, ...] = ()
    max_drop: float | None = None  # top-1 points: accuracy drop with labels, else 100 − agreement with fp32
    min_sqnr: float | None = None  # dB, mean-centred SQNR of the outputs against fp32
    trt_cache: Path | None = None
    threads: int | None = None
    keep_failed: bool = False  # a missed budget still writes the best found (default: nothing is written)
    fixed_batch: bool = False  # the file fixes its batch dim: ``batch`` is that, and runs take whole batches
    aim_preset: bool = True  # no budget given: keep the most sensitive layers in float until the preset holds
    tier2: bool = True  # the tournament misses the aim: bias correction before mixed precision
    placement: str = "auto"  # Q/DQ placement: convs, elementwise, or auto (ort-cpu: both judged and timed)
    time_budget: float | None = None  # seconds tier 2 may take (it stops between its runs)


@dataclass
class Score:
    """One candidate judged on the held-out data against the fp32 model (first output)."""

    label: str
    sqnr_db: float
    centred_sqnr_db: float
    cosine: float
    top1_agreement: float | None  # % of samples whose argmax matches fp32
    accuracy: float | None  # % against the labels, when the data has labels
    seconds: float = 0.0
    samples: int = 0  # held-out samples it was judged on (a first-round tournament loser sees fewer)
    top1_interval: tuple[float, float] | None = None  # 95 % Wilson interval of top1_agreement, in %
    drop: float | None = None  # top-1 points lost (heldout.top1_drop): what a --max-drop budget reads

    def key(self) -> tuple[float, float]:
        """Higher is better. With labels: accuracy, then mean-centred SQNR. Class-like outputs without
        labels: top-1 agreement with fp32, then mean-centred SQNR — what a classifier's user sees is
        its decisions (SQNR once preferred a method at 75 % agreement over one at 91.7 %). Other
        outputs: mean-centred SQNR."""
        if self.accuracy is not None:
            return (self.accuracy, _finite(self.centred_sqnr_db))
        if self.top1_agreement is not None:
            return (self.top1_agreement, _finite(self.centred_sqnr_db))
        return (_finite(self.centred_sqnr_db), 0.0)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else
                    (None if isinstance(v, float) else v)) for k, v in asdict(self).items()}


def _finite(x: float) -> float:
    return x if math.isfinite(x) else (1e9 if x > 0 else -1e9)


@dataclass(repr=False)
class QuantizeReport(Report):
    model: str
    output: str
    precision: str
    target: str
    method: str  # as asked
    chosen: str  # what was written
    calib: str
    eval_data: str
    samples: int
    eval_samples: int
    fp32_accuracy: float | None = None
    scores: list[Score] = field(default_factory=list)  # the tournament (or the one method)
    final: Score | None = None
    kept_float: list[str] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)  # per layer, kept in float alone
    steps: list[dict] = field(default_factory=list)  # what each tier reached: tournament, mixed precision
    int8_mac_share: float | None = None  # of the quantizable layers' MACs, the share that stays int8
    budget: str | None = None
    budget_met: bool | None = None
    preset_failures: list[str] = field(default_factory=list)  # `deploy check --precision` misses, held-out
    allowed_poor: bool = False
    integer_kernels: dict | None = None  # what the runtime runs: ORT's optimized graph, or OpenVINO's compiled one
    latency: dict | None = None  # int8 vs fp32 medians on the target's CPU runtime, interleaved
    placement: dict | None = None  # each placement tried: its time and preset failures, and the one chosen
    quantized_nodes: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    table_path: str | None = None
    trt_cache: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pass_report: dict | None = None
    written: bool = False  # False after a missed budget without keep_failed: no file at output

    @property
    def passed(self) -> bool:
        """The budget (if any) and deploy check's preset both met: never true for a POOR file."""
        return self.budget_met is not False and not self.preset_failures

    @property
    def accepted(self) -> bool:
        """Written and exit 0: passed, or POOR under --allow-poor (the budget, if any, still met)."""
        return self.passed or (self.budget_met is not False and self.allowed_poor)

    @property
    def verdict(self) -> str:
        return "PASSED" if self.passed else ("POOR" if self.accepted else "FAILED")

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("scores", "final")}
        out["scores"] = [s.to_dict() for s in self.scores]
        out["final"] = self.final.to_dict() if self.final else None
        out["passed"] = self.passed
        out["verdict"] = self.verdict
        out["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}
        return out

    def summary(self) -> str:
        f = self.final
        if f is None:
            return f"{self.output}: no result"
        parts = [f"{self.precision} {self.target}" if self.precision == "int8" else "fp16",
                 f"method {self.chosen}" if self.precision == "int8" else "",
                 f"centred SQNR {f.centred_sqnr_db:.1f} dB"]
        if f.top1_agreement is not None:
            parts.append(f"top-1 agreement {f.top1_agreement:.1f} %")
        if f.accuracy is not None:
            parts.append(f"accuracy {f.accuracy:.2f} % (fp32 {self.fp32_accuracy:.2f} %)")
        if self.kept_float:
            parts.append(f"{kept_text(self.kept_float)} kept in float")
        text = ", ".join(p for p in parts if p)
        if self.verdict == "POOR":
            return (f"POOR {self.output}: written because of --allow-poor, but it misses the {self.precision} preset "
                    f"of deploy check ({'; '.join(self.preset_failures)}): {text}")
        slower = ""
        if self.latency and not self.latency.get("faster", True):
            runtime = CPU_RUNTIMES.get(self.latency.get("runtime", "ort-cpu"), "ONNX Runtime CPU")
            slower = (f" — but NOT faster than fp32 here ({speed_verdict(self.latency)} on {runtime}, batch "
                      f"{self.latency['batch']}): int8 does not pay on this model as quantized")
        if self.passed:
            return (f"PASSED {self.output}: {text}" + (f" (budget {self.budget} met)" if self.budget else "")
                    + slower)
        where = (f"the best found is kept at {self.output} (--keep-failed)" if self.written else
                 f"{self.output} not written (--keep-failed keeps the best found; --allow-poor writes it as passed)")
        if self.budget_met is False:
            return f"FAILED {self.output}: budget {self.budget} not met; best found: {text}; {where}"
        return (f"FAILED {self.output}: misses the {self.precision} preset of deploy check on held-out data "
                f"({'; '.join(self.preset_failures)}): {text}; {where}")


def kept_text(kept) -> str:
    """'3 layer(s) and 1 tensor(s)' for a kept-in-float set of layers and tensor units."""
    tensors = sum(1 for k in kept if k.startswith("tensor:"))
    layers = len(kept) - tensors
    return " and ".join(p for p in (f"{layers} layer(s)" if layers else "",
                                    f"{tensors} tensor(s)" if tensors else "") if p)


def table_path_for(output: Path) -> Path:
    """``m.int8.onnx`` → ``m.int8.ranges.json`` (the ranges table lives beside the model)."""
    return output.with_name(output.stem + ".ranges.json")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _batches(array: np.ndarray, name: str, batch: int, whole: bool = False) -> list[dict[str, np.ndarray]]:
    """Runs of ``batch`` samples; ``whole`` (a file with a fixed batch dim) drops a partial last run."""
    stop = len(array) - len(array) % batch if whole else len(array)
    if stop == 0:
        raise BadInputError(f"{len(array)} samples do not fill one batch of {batch}, the model's fixed batch; "
                            f"raise --samples/--eval-samples")
    return [{name: array[i:i + batch]} for i in range(0, stop, batch)]


class _Judge(HeldOut):
    """Scores candidate models (ONNX in memory, or loaded sessions) on the held-out data against the fp32
    reference outputs: :class:`deploy.harness.heldout.HeldOut`, run through ONNX Runtime sessions."""

    def __init__(self, fp32: onnx.ModelProto | None, feeds: list[dict[str, np.ndarray]], labels: np.ndarray | None,
                 threads: int | None, session=None, reference: tuple[str, np.ndarray] | None = None,
                 runtime: str = "ort-cpu"):
        """``session``: an already loaded session that computes the fp32 output (the calibration one).
        ``reference``: (output name, fp32 outputs on ``feeds``) already known: no fp32 model is run.
        ``runtime``: where candidates run ("ov-cpu": OpenVINO's CPU plugin, the target's own int8 kernels); the
        fp32 reference always runs on ONNX Runtime, as the file's meaning."""
        self.feeds, self.threads, self.runtime = feeds, threads, runtime
        if reference is not None:
            self.output, known = reference
            super().__init__(feeds, labels, reference=known)
        else:
            self.output = fp32.graph.output[0].name
            super().__init__(feeds, labels, reference=self._outputs(session or cpu_session(fp32, threads)))
        self.fp32_accuracy = self.reference_accuracy

    def _outputs(self, model_or_session, batches: int | None = None) -> np.ndarray:
        session = self.session(model_or_session) if isinstance(model_or_session, onnx.ModelProto) \
            else model_or_session
        run = run_function(session, [self.output])
        return np.concatenate([run(f)[self.output] for f in self.feeds[:batches]])

    def session(self, model: onnx.ModelProto):
        return open_session(model, self.threads, self.runtime)

    def hardest(self, model: onnx.ModelProto, share: float) -> _Judge:
        """A judge on the held-out samples ``model`` gets most wrong (relative error ‖y − ŷ‖/‖y‖ of the mean-
        centred outputs, per sample), ``share`` of them in whole runs: the preset's cosine and total variation
        are low percentiles over samples, so what moves them is decided on the hard samples (as NNCF's accuracy
        control ranks its fallbacks on the hardest validation items)."""
        out = self._outputs(model)
        n = len(out)
        ref = self.reference[:n].reshape(n, -1).astype(np.float64)
        got = out.reshape(n, -1).astype(np.float64)
        ref_c, got_c = ref - ref.mean(axis=1, keepdims=True), got - got.mean(axis=1, keepdims=True)
        error = np.linalg.norm(got_c - ref_c, axis=1) / np.maximum(np.linalg.norm(ref_c, axis=1), 1e-12)
        batch = len(next(iter(self.feeds[0].values())))
        count = min(n, max(batch, -(-round(share * n) // batch) * batch))  # whole runs of the same batch
        chosen = np.sort(np.argsort(-error, kind="stable")[:count])
        names = list(self.feeds[0])
        joined = {k: np.concatenate([f[k] for f in self.feeds])[:n][chosen] for k in names}
        return _Judge(None, [{k: v[i:i + batch] for k, v in joined.items()} for i in range(0, count, batch)],
                      None if self.labels is None else self.labels[:n][chosen], self.threads,
                      reference=(self.output, self.reference[:n][chosen]), runtime=self.runtime)

    def score(self, model, label: str, batches: int | None = None) -> Score:
        """Judge a model (or a loaded session of one) on the held-out data, or on its first ``batches``."""
        return self.score_and_preset(model, label, batches)[0]

    def score_and_preset(self, model, label: str, batches: int | None = None, precision: str = "int8"):
        """(Score, the comparison judged by deploy check's preset for ``precision``) from one run."""
        start = time.perf_counter()
        out = self._outputs(model, batches)
        j = self.judge(out, self.output, PRESETS[precision])
        d = j.diff
        return Score(label, d.sqnr_db, d.centred_sqnr_db, d.cosine, j.agreement, j.accuracy,
                     time.perf_counter() - start, j.samples, j.agreement_interval, j.drop), d

    def preset_failures(self, model, precision: str) -> list[str]:
        """What the final model misses of ``deploy check``'s preset for its precision, on the held-out data."""
        return self.preset_diff(model, precision).failures

    def preset_diff(self, model, precision: str):
        """The held-out comparison judged by ``deploy check``'s preset (its failures and shortfall)."""
        out = self._outputs(model)
        return diff_output(self.output, self.reference[:len(out)], out, PRESETS[precision])

    def drop(self, score: Score) -> float | None:
        """Top-1 points lost: accuracy drop with labels, else disagreement with fp32."""
        return top1_drop(score.accuracy, self.fp32_accuracy, score.top1_agreement)


TIMING = BenchConfig(min_runs=20, min_time=0.6, max_time=6.0, gap=0.002)  # quantize's quick look: the bench's timer


def _interleaved_latency(fp32: onnx.ModelProto, int8: onnx.ModelProto, feeds: dict[str, np.ndarray],
                         threads: int | None, seconds: float = 1.0, runtime: str = "ort-cpu") -> dict:
    """fp32 and int8 timed by the bench's interleaved timer on one batch, both on ``runtime``: medians, and the
    paired ratio int8/fp32 with its 95 % interval (``faster`` only when the whole interval is below 1)."""
    fp32_ms, (int8_ms,), (ratio,), runs, _ = _interleaved_medians(fp32, [int8], feeds, threads, seconds, runtime)
    return {"fp32_ms": round(fp32_ms, 5), "int8_ms": round(int8_ms, 5), "ratio": round(ratio.ratio, 4),
            "ratio_low": round(ratio.low, 4), "ratio_high": round(ratio.high, 4), "faster": ratio.high < 1.0,
            "runs": runs, "batch": len(next(iter(feeds.values()))), "runtime": runtime}


def speed_verdict(latency: dict) -> str:
    """The int8/fp32 timing of a quantize report in words (see :func:`deploy.harness.stats.ratio_verdict`)."""
    return ratio_verdict(latency["ratio"], latency["ratio_low"], latency["ratio_high"])


def _interleaved_medians(fp32: onnx.ModelProto, others: list[onnx.ModelProto], feeds: dict[str, np.ndarray],
                         threads: int | None, seconds: float, runtime: str = "ort-cpu"
                         ) -> tuple[float, list[float], list, int, list]:
    """(fp32 median ms, each other model's median ms, each one's paired ratio to fp32, rounds, the seconds of
    every run of each, fp32 first), from
    :func:`deploy.harness.bench.interleave` on sessions with thread spinning off, each warmed up alone first."""
    timers = [session_timer(open_session(m, threads, runtime, timing=True), feeds) for m in (fp32, *others)]
    for timer in timers:
        warm_up(timer, Warmup(), cap_seconds=seconds)
    times, rounds = interleave(timers, replace(TIMING, min_time=seconds, max_time=max(6.0, 4 * seconds)))
    medians = [float(np.median(t)) * 1e3 for t in times]
    ratios = [paired_ratio(t, times[0]) for t in times[1:]]
    return medians[0], medians[1:], ratios, rounds, times


def _budget(options: QuantizeOptions) -> Budget:
    return Budget(options.max_drop, options.min_sqnr)


def _meets(judge: _Judge, score: Score, options: QuantizeOptions) -> bool:
    return not _budget(options).misses(score)


def _budget_text(options: QuantizeOptions, labels: bool) -> str | None:
    return _budget(options).describe(labels) or None


def _validate(options: QuantizeOptions) -> None:
    if options.precision not in PRECISIONS:
        raise BadInputError(f"--precision {options.precision}: choose from {', '.join(PRECISIONS)}")
    if options.method not in METHOD_CHOICES:
        raise BadInputError(f"--method {options.method}: choose from {', '.join(METHOD_CHOICES)}")
    if options.target not in TARGETS:
        raise BadInputError(f"--target {options.target}: choose from {', '.join(TARGETS)}")
    if options.placement not in ("auto", *PLACEMENTS):
        raise BadInputError(f"--placement {options.placement}: choose from auto, {', '.join(PLACEMENTS)}")
    for flag, value in (("--samples", options.samples), ("--eval-samples", options.eval_samples),
                        ("--run-batch", 1 if options.batch is None else options.batch)):
        if value < 1:
            raise BadInputError(f"{flag} {value}: must be at least 1")
    if options.max_drop is not None and options.max_drop < 0:
        raise BadInputError(f"--max-drop {options.max_drop}: must be ≥ 0 (top-1 points)")
    if options.trt_cache is not None:
        output_path(options.trt_cache, "--trt-cache")


def _load_fp32(artifact: Artifact, tmp_dir: Path, say: Callable[[str], None]) -> onnx.ModelProto:
    if artifact.kind == "torch":
        say("exporting to ONNX")
        path = tmp_dir / "fp32.onnx"
        export_onnx(artifact, path, verify=False)
        return onnx.load(str(path))
    return onnx.load(str(artifact.onnx_path))


def _same_source(a: str, b: str) -> bool:
    if a == b:
        return True
    return a != "photos" and b != "photos" and Path(a).resolve() == Path(b).resolve()


def _data(options: QuantizeOptions, input_name: str, shape, say) -> tuple:
    """(calibration samples, held-out samples); disjoint when they come from one source: the held-out
    samples start after every item calibration read or tried (unreadable files included).

    Small data works: when the counts were not given and one source holds fewer than both defaults ask,
    a quarter of it (at least 8) is held out and the rest calibrates."""
    from ..calib.data import count_samples, split_counts

    if not options.counts_given and options.eval_data is None:
        total = count_samples(options.calib, input_name)
        split = split_counts(total, options.samples, options.eval_samples) if total else None
        if split is not None and split[0] >= 8:  # fewer than 16: the loaders' own errors say what is wrong
            options = replace(options, samples=split[0], eval_samples=split[1])
            say(f"{options.calib} holds {total} samples: {split[0]} calibrate, {split[1]} held out (a quarter; "
                f"--samples/--eval-samples set them)", note=True)
    try:
        calib = load_samples(options.calib, shape, n=options.samples, input_name=input_name)
    except DataSourceError as err:
        raise BadInputError(str(err)) from None
    if calib.array.size and float(np.ptp(calib.array)) == 0.0:
        raise BadInputError(f"--data {options.calib}: every calibration value is {calib.array.flat[0]:g}: ranges "
                            f"from constant data mean nothing (all zeros?); give real inputs")
    source = options.calib if options.eval_data is None else options.eval_data
    offset = len(calib.array) + len(calib.skipped) if _same_source(source, options.calib) else 0
    try:
        held = load_samples(source, shape, n=options.eval_samples, offset=offset, input_name=input_name)
    except DataSourceError as err:
        raise BadInputError(f"{source}: no held-out data left after the {offset} calibration samples ({err}); "
                            f"lower --samples or --eval-samples, or give other data with --eval") from None
    return calib, held


def quantize_artifact(
    artifact: Artifact,
    output: str | os.PathLike,
    options: QuantizeOptions,
    progress: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Quantize ``artifact`` to ``output`` (and its ranges table beside it). Files are written atomically;
    with a budget that no fallback meets nothing is written, unless ``options.keep_failed`` asks for the
    best model found (the report says which)."""
    _validate(options)
    say = progress or (lambda _msg: None)
    output = onnx_output_path(output)
    start = time.perf_counter()
    if len(artifact.inputs) != 1:
        raise BadInputError(f"{artifact.label}: calibration feeds one image/array input; the model has "
                            f"{len(artifact.inputs)}")
    fixed = artifact.inputs[0].shape[0] if artifact.inputs[0].shape else None
    if isinstance(fixed, int) and fixed > 0:  # a --static export: every run must be that batch
        if options.batch not in (None, fixed):
            raise BadInputError(f"--run-batch {options.batch}: {artifact.label} fixes the batch at {fixed}")
        options = replace(options, batch=fixed, fixed_batch=True)
    try:
        with staged_output(output) as staged:
            return _quantize_staged(artifact, output, options, staged, start, say)
    except QuantizeError as err:
        raise BadInputError(f"{artifact.label}: {err}") from None


def _quantize_staged(artifact: Artifact, output: Path, options: QuantizeOptions, staged, start: float,
                     say: Callable[[str], None]) -> QuantizeReport:
    """The quantization itself, writing into ``staged`` (committed only when the result is accepted)."""
    tmp_dir = staged.folder
    fp32 = _load_fp32(artifact, tmp_dir, say)
    folds = fold_shape_constants(fp32)  # exact: Reshape(bias, shape) and the like, as ONNX Runtime folds them
    if any(n.op_type in ("BatchNormalization", *AFFINE_OPS) for n in fp32.graph.node):
        folded = onnx_fuse_bn(fp32)  # exact: BN and constant per-channel scale/shift into the layers
        fp32, folds = folded.model, folds + len(folded.report.sites)
    swish = onnx_fuse_hardswish(fp32)  # exact: x·clip(x + 3, 0, 6)/6 as one HardSwish (one float island)
    fp32 = swish.model
    input_name = fp32.graph.input[0].name
    shape = artifact.input_shape
    report = QuantizeReport(artifact.label, str(output), options.precision, options.target, options.method,
                            options.method, options.calib, options.eval_data or options.calib,
                            options.samples, options.eval_samples)
    if folds:
        report.notes.append(f"{folds} constant shape op(s), BatchNormalization and constant per-channel scale or "
                            f"shift node(s) folded first (exact, as ONNX Runtime and deploy fuse do)")
    if swish.report.sites:
        report.notes.append(f"{len(swish.report.sites)} HardSwish written as Add/Clip/Mul/Div (or HardSigmoid/"
                            f"Mul) rewritten as the one HardSwish op first (exact; int8 and its timing are "
                            f"against this graph in float)")
    report.nodes_before = len(fp32.graph.node)
    report.bytes_before = fp32.ByteSize()
    if options.precision == "fp16":
        model, table = _fp16(fp32, options, report, input_name, shape, say), None
    else:
        model, table = _int8(fp32, options, report, input_name, shape, say)
    report.nodes_after = len(model.graph.node)
    tmp_path = staged.path
    save_onnx(model, tmp_path)
    report.bytes_after = tmp_path.stat().st_size
    if not report.accepted and not options.keep_failed:
        report.seconds["total"] = time.perf_counter() - start
        return report
    staged.commit()
    report.written = True
    if table is not None:
        report.table_path = str(table_path_for(output))
        table.save(report.table_path)
        if options.trt_cache is not None:
            write_trt_cache(table, options.trt_cache)
            report.trt_cache = str(options.trt_cache)
    report.seconds["total"] = time.perf_counter() - start
    return report


def _int8(fp32: onnx.ModelProto, options: QuantizeOptions, report: QuantizeReport, input_name: str, shape,
          say: Callable[[str], None]) -> tuple[onnx.ModelProto, RangesTable]:
    target = get_target(options.target)
    keep = resolve_keep_float(fp32, options.keep_float)
    placements = _placements(options)
    bases = {"convs": fp32}
    if "elementwise" in placements:  # ONNX Runtime has QLinearMul, no integer Div, HardSigmoid or HardSwish
        bases["elementwise"] = _copy(fp32)
        divisions_to_products(bases["elementwise"])
        expanded = expand_hard_activations(bases["elementwise"]).report.sites
        if expanded:
            report.notes.append(f"elementwise placement: {len(expanded)} HardSwish/HardSigmoid written out as "
                                f"Add → Clip → Mul, which ONNX Runtime runs on uint8 (it has no integer kernel "
                                f"for either op)")
    plans = {name: plan_qdq(bases[name], target, keep, name) for name in placements}
    if len(placements) > 1 and set(plans["elementwise"].activations) == set(plans["convs"].activations):
        placements = ["convs"]  # nothing elementwise between the layers: one placement, nothing to time
    current = [placements[0]]  # the placement the tournament runs on; the placement step may change it
    plan = plans[current[0]]
    calib, held = _data(options, input_name, shape,
                        lambda msg, note=False: report.notes.append(msg) if note else say(msg))
    report.calib, report.eval_data = calib.description, held.description
    report.samples, report.eval_samples = len(calib.array), len(held.array)
    if calib.skipped:
        report.notes.append(f"{len(calib.skipped)} unreadable calibration file(s) skipped")

    t0 = time.perf_counter()
    say(f"calibrating: {len(plan.calibrated)} tensors over {len(calib.array)} samples")
    graph_inputs = {i.name for i in fp32.graph.input}
    # every planned tensor, the inherited ones too: keeping a layer in float during the fallback can turn
    # a tensor that inherits its parameters (a Flatten output) into one that needs its own range
    wanted = list(dict.fromkeys(t for p in plans.values() for t in p.activations if t not in p.constants))
    if "elementwise" in plans:  # mixed precision may keep an elementwise node float: its neighbours need ranges
        wanted = list(dict.fromkeys([*wanted, *_elementwise_neighbours(bases["elementwise"], plans["elementwise"])]))
    measured = [t for t in wanted if t not in graph_inputs]
    # the elementwise base holds every tensor the convs one does, and the written-out HardSwish gates besides
    source = bases.get("elementwise", fp32)
    session = cpu_session(with_outputs(source, measured), options.threads)
    run_model = run_function(session, measured)
    say("running the fp32 model on the held-out data")
    held_batches = _batches(held.array, input_name, options.batch or SCORING_BATCH, options.fixed_batch)
    judge = _Judge(fp32, held_batches, held.labels,  # the reference is fp32's own output, not the rewritten graph's
                   options.threads, session if source is fp32 else None, runtime=_runtime(options.target))
    report.fp32_accuracy = judge.fp32_accuracy
    if options.max_drop is not None and (judge.reference.ndim != 2 or judge.reference.shape[1] < 2):
        raise BadInputError(f"--max-drop needs a classifier output of shape (N, classes); the first output is "
                            f"{list(judge.reference.shape)}: use --min-sqnr")

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # the inputs are calibrated too
        return {**run_model(feeds), **{k: v for k, v in feeds.items() if k in wanted}}

    batches = _batches(calib.array, input_name, options.batch or CALIBRATION_BATCH, options.fixed_batch)
    done = [0]

    def tick(_n: int = 1) -> None:
        done[0] += 1
        say(f"calibrating: batch {done[0]}/{len(batches)}")

    collector = collect_histograms(run, batches, progress=tick, max_samples=HISTOGRAM_SAMPLES)
    report.seconds["calibrate"] = time.perf_counter() - t0

    def recalibrate(model: onnx.ModelProto, tensors: list[str]) -> dict:
        """Ranges of ``tensors`` in ``model`` by the tournament's method, over the same calibration batches."""
        tensors = [t for t in dict.fromkeys(tensors) if t in measured]
        if not tensors:
            return {}
        say(f"measuring {len(tensors)} equalized tensor(s) again")
        found = collect_histograms(run_function(cpu_session(with_outputs(model, tensors), options.threads), tensors),
                                   batches, max_samples=HISTOGRAM_SAMPLES)
        return compute_ranges(found, report.chosen, unsigned=target.unsigned)

    quantized_weights: dict = {}
    corrections: dict[str, np.ndarray] = {}  # tier 2's bias correction, per quantized layer

    def build(ranges: dict, kept: set[str], placement: str | None = None) -> tuple[onnx.ModelProto, dict, QdqPlan]:
        placement = placement or current[0]
        candidate = _copy(bases[placement])
        if corrections:  # a layer kept in float keeps its own bias: the correction is for its int8 error
            fold_corrections(candidate, {k: v for k, v in corrections.items() if k not in kept})
        used = plans[placement] if kept == keep else plan_qdq(candidate, target, kept, placement)
        result = insert_qdq(candidate, used, ranges, quantized_weights)
        return result.model, result.report.to_dict(), used

    t0 = time.perf_counter()
    methods = list(TOURNAMENT) if options.method == "auto" else [options.method]
    candidates: dict[str, dict] = {}
    # Successive halving: every method on the first quarter of the held-out data, the best FINALISTS on
    # all of it. The first round only has to tell clearly worse ranges from good ones.
    first_round = max(1, len(judge.feeds) // 4) if len(methods) > FINALISTS and len(judge.feeds) >= 4 else None
    sessions, scores = {}, {}
    for i, method in enumerate(methods, 1):
        say(f"scoring {method} ({i}/{len(methods)})")
        ranges = compute_ranges(collector, method, unsigned=target.unsigned)
        model, _, _ = build(ranges, keep)
        sessions[method] = judge.session(model)
        scores[method] = judge.score(sessions[method], method, first_round)
        candidates[method] = ranges
    if first_round is not None:
        finalists = sorted(methods, key=lambda m: scores[m].key(), reverse=True)[:FINALISTS]
        for method in finalists:
            say(f"final round: {method} on {len(held.array)} held-out samples")
            scores[method] = judge.score(sessions[method], method)
        best = max((scores[m] for m in finalists), key=Score.key)
    else:
        best = max(scores.values(), key=Score.key)
    sessions.clear()
    report.scores = [scores[m] for m in methods]
    report.chosen, ranges = best.label, candidates[best.label]
    report.seconds["tournament" if options.method == "auto" else "score"] = time.perf_counter() - t0

    timing_feed = judge.feeds[0] if options.fixed_batch else {k: v[:1] for k, v in judge.feeds[0].items()}
    order, first_scores = placements, {placements[0]: best}
    if len(placements) > 1:
        t0 = time.perf_counter()
        order, first_scores = _order_placements(fp32, placements, ranges, keep, judge, build, timing_feed, options,
                                                report, say)
        report.seconds["placement"] = time.perf_counter() - t0
    report.budget = _budget_text(options, held.labels is not None)
    macs = _layer_macs(fp32, plans[order[0]], judge.feeds[0])

    def settle(name: str) -> tuple[set[str], Score, list[str]]:
        """Tier 2, then the budget's fallback or mixed precision, on placement ``name``: (kept, score, failures)."""
        current[0] = name
        quantized_weights.clear()
        corrections.clear()
        plan = plans[name]
        best = first_scores[name]
        ranges = dict(tournament_ranges)  # tier 2's equalization may measure some again, for this placement
        label = "tournament" if len(order) == 1 else f"tournament, {name} placement"
        diff = judge.preset_diff(build(ranges, keep)[0], "int8")
        failures = diff.failures
        report.steps.append(_step(label, best, failures, 0))
        missed = failures if report.budget is None else not _meets(judge, best, options)
        if options.tier2 and missed:
            def equalized() -> tuple[onnx.ModelProto, dict, Equalization]:
                model = _copy(bases[name])
                found = equalize(model, exclude=keep)
                return model, recalibrate(model, found.changed_tensors), found

            def use_base(model: onnx.ModelProto) -> None:
                bases[name] = model

            best, failures = _tier2(bases[name], plan, ranges, keep, judge, batches, options, report, build, say,
                                    best, diff, quantized_weights, corrections, equalized, use_base)
        kept, final_score = set(keep), best
        if report.budget is not None:
            report.budget_met = _meets(judge, best, options)
            if not report.budget_met:
                t0 = time.perf_counter()
                kept, final_score = _fallback(bases[name], plan, ranges, keep, judge, options, report, build, say,
                                              best)
                report.seconds["sensitivity"] = report.seconds.get("sensitivity", 0.0) + time.perf_counter() - t0
        elif options.aim_preset and failures:  # the all-int8 result so far (after tier 2) misses it
            # No budget: deploy check's int8 preset is the aim. Mixed precision: the units whose float form
            # comes nearest the preset go back to float, one at a time, until it holds on the held-out data.
            say("the all-int8 result misses deploy check's int8 preset: mixed precision until it holds")
            t0 = time.perf_counter()
            kept, final_score = _fallback(bases[name], plan, ranges, keep, judge, options, report, build, say, best,
                                          meets=lambda model, _score: not judge.preset_failures(model, "int8"),
                                          aim="deploy check's int8 preset", macs=macs)
            report.seconds["mixed precision"] = (report.seconds.get("mixed precision", 0.0)
                                                 + time.perf_counter() - t0)
        if kept != set(keep):  # the tournament's file again when nothing went back to float: verdict known
            failures = judge.preset_failures(build(ranges, kept)[0], "int8")
        return kept, final_score, failures, ranges

    # the preferred placement first; one that ends short of the aim gives way to the next (the fastest that
    # still meets it is kept — issue "int8 as fast as the runtime allows")
    outcomes = {}
    tournament_ranges = ranges
    for i, name in enumerate(order):
        kept, final_score, failures, ranges = settle(name)
        outcomes[name] = (kept, final_score, failures, dict(quantized_weights), dict(corrections), report.budget_met,
                          ranges)
        if not failures and report.budget_met is not False:
            break
        if i < len(order) - 1:
            report.notes.append(f"placement {name} ended short of the aim ({'; '.join(failures) or report.budget})"
                                f": trying {order[i + 1]}")
    else:  # none meets the aim: the preferred placement's result is the one judged
        current[0] = order[0]
        kept, final_score, failures, weights, found, report.budget_met, ranges = outcomes[order[0]]
        quantized_weights.clear()
        quantized_weights.update(weights)
        corrections.clear()
        corrections.update(found)
    if report.placement is not None:
        report.placement["chosen"] = current[0]
    model, pass_report, final_plan = build(ranges, kept)
    report.final = final_score
    report.preset_failures = failures
    report.allowed_poor = bool(report.preset_failures) and options.allow_poor
    report.kept_float = sorted(kept)
    if kept != set(keep):
        report.steps.append(_step(f"mixed precision ({kept_text(kept - set(keep))} in float)", final_score,
                                  report.preset_failures, len(kept - set(keep))))
    total_macs = sum(macs.values())
    report.int8_mac_share = (sum(v for k, v in macs.items() if k in final_plan.weighted) / total_macs
                             if total_macs else None)
    report.pass_report = pass_report
    report.quantized_nodes = len([s for s in pass_report["sites"] if "int8 weights" in s["what"]])
    if options.target == "ov-cpu":
        from ..ov import cpu_session as ov_session
        from ..ov import integer_kernels

        say("reading what OpenVINO's CPU plugin compiled")
        report.integer_kernels = {"runtime": "ov-cpu", **integer_kernels(ov_session(model, options.threads))}
        if options.measure:
            say("timing int8 against fp32 on OpenVINO CPU")
            report.latency = _interleaved_latency(fp32, model, timing_feed, options.threads, runtime="ov-cpu")
            if not report.latency["faster"]:
                report.notes.append(
                    f"int8 is NOT faster than fp32 on OpenVINO here ({speed_verdict(report.latency)}; "
                    f"{report.latency['int8_ms']:.2f} ms vs {report.latency['fp32_ms']:.2f} ms per run of "
                    f"{report.latency['batch']}) — `deploy pipeline` will not ship it")
    if options.target == "ort-cpu":
        say("reading ONNX Runtime's optimized graph")
        runs_as = optimized_graph(model, options.threads)
        ops, trips = op_counts(runs_as), round_trips(runs_as)
        report.integer_kernels = {"QLinearConv": ops.get("QLinearConv", 0), "Conv (float)": ops.get("Conv", 0),
                                  "QGemm": ops.get("QGemm", 0), "QLinearMatMul": ops.get("QLinearMatMul", 0),
                                  "QLinearAdd": ops.get("QLinearAdd", 0), "ops": ops,
                                  "round_trips": trips.to_dict()}
        if options.measure:
            say("timing int8 against fp32 on ONNX Runtime CPU")
            report.latency = _interleaved_latency(fp32, model, timing_feed, options.threads)
            if not report.latency["faster"]:
                report.notes.append(
                    f"int8 is NOT faster than fp32 here ({speed_verdict(report.latency)}; "
                    f"{report.latency['int8_ms']:.2f} ms vs {report.latency['fp32_ms']:.2f} ms per run of "
                    f"{report.latency['batch']}): {trips.text()}; the float ops and Q/DQ left cost what the "
                    f"integer kernels save — `deploy pipeline` will not ship it, `deploy bench` times it on the target")
    table = RangesTable(
        ranges={t: (float(lo), float(hi)) for t, (lo, hi) in ranges.items() if t in set(final_plan.calibrated)},
        method=report.chosen, target=options.target, fingerprint=fingerprint_arrays(calib.array),
        samples=len(calib.array),
        source=calib.description, scores={s.label: s.to_dict() for s in report.scores})
    return model, table


def _runtime(target: str) -> str:
    """Where the held-out judge runs a target's candidates: its own CPU runtime, else ONNX Runtime CPU."""
    return target if target in CPU_RUNTIMES else "ort-cpu"


def _placements(options: QuantizeOptions) -> list[str]:
    """Placements to try: on the CPU runtimes (ONNX Runtime, OpenVINO) both are judged and timed on the target
    (auto; also when ``measure`` is off, which only skips the final int8-vs-fp32 look: the pipeline times its
    candidates itself); other targets keep Q/DQ around the convs."""
    if options.placement != "auto":
        return [options.placement]
    return ["convs", "elementwise"] if options.target in CPU_RUNTIMES else ["convs"]


def _order_placements(fp32, placements: list[str], ranges, keep: set[str], judge: _Judge, build, feeds,
                      options: QuantizeOptions, report: QuantizeReport, say) -> tuple[list[str], dict[str, Score]]:
    """Each placement with the tournament's ranges, judged on the held-out data and timed against fp32 in one
    interleaved run, in order of preference: one that meets the preset before one that does not; between
    equals, the faster first when the paired ratio of their times says so beyond the noise (its 95 % interval
    clear of 1), else the nearer to the preset (its shortfall). Returns (the order, each placement's score)."""
    import functools

    say(f"placement: {' vs '.join(placements)}, judged and timed")
    models, found = {}, {}
    for name in placements:
        models[name] = build(ranges, keep, name)[0]
        try:
            score, diff = judge.score_and_preset(models[name], f"{report.chosen}, {name}")
        except BadInputError as err:  # the target's runtime refuses this placement's file (the first one it ran)
            if name == placements[0]:
                raise
            report.notes.append(f"placement {name} dropped: {err}")
            del models[name]
            continue
        found[name] = {"score": score, "diff": diff}
    placements = [n for n in placements if n in found]
    if len(placements) == 1:
        return placements, {placements[0]: found[placements[0]]["score"]}
    fp32_ms, medians, ratios, rounds, times = _interleaved_medians(
        fp32, [models[n] for n in placements], feeds, options.threads, seconds=3.0, runtime=_runtime(options.target))
    for i, (name, ms, ratio) in enumerate(zip(placements, medians, ratios)):
        found[name].update(ms=ms, ratio=ratio, times=times[i + 1])

    def before(a: str, b: str) -> int:
        pa, pb = found[a]["diff"].passed, found[b]["diff"].passed
        if pa != pb:
            return -1 if pa else 1
        between = paired_ratio(found[a]["times"], found[b]["times"])  # a's time over b's, same rounds
        if between.high < 1.0:
            return -1
        if between.low > 1.0:
            return 1
        return -1 if found[a]["diff"].shortfall() <= found[b]["diff"].shortfall() else 1

    order = sorted(placements, key=functools.cmp_to_key(before))
    report.placement = {
        "chosen": order[0], "order": order, "batch": len(next(iter(feeds.values()))), "fp32_ms": round(fp32_ms, 5),
        "rounds": rounds,
        "candidates": {n: {"int8_ms": round(f["ms"], 5), "ratio": round(f["ratio"].ratio, 4),
                           "ratio_low": round(f["ratio"].low, 4), "ratio_high": round(f["ratio"].high, 4),
                           "centred_sqnr_db": _step("", f["score"], [], 0)["centred_sqnr_db"],
                           "preset_failures": f["diff"].failures,
                           "preset_shortfall": round(f["diff"].shortfall(), 6)} for n, f in found.items()}}
    if len(order) > 1:  # the speed the choice rests on: the first placement's time over the next one's
        versus = paired_ratio(found[order[0]]["times"], found[order[1]]["times"])
        report.placement["first_over_next"] = {"ratio": round(versus.ratio, 4), "low": round(versus.low, 4),
                                               "high": round(versus.high, 4)}
    return order, {n: f["score"] for n, f in found.items()}


TIER2_SAMPLES = 32  # calibration samples GPTQ's Gram matrices come from
BIAS_SAMPLES = 16  # calibration samples bias correction's channel means come from (one run per layer)


def _tier2(fp32, plan: QdqPlan, ranges: dict, keep: set[str], judge: _Judge, batches, options: QuantizeOptions,
           report: QuantizeReport, build, say, best: Score, diff, quantized_weights: dict,
           corrections: dict, equalized=None, use_base=None) -> tuple[Score, list[str]]:
    """Second-tier PTQ on the tournament's ranges: cross-layer equalization (``equalized()`` returns the
    equalized fp32 graph, the ranges measured again and the pass's report; ``use_base`` adopts the graph), GPTQ
    weight rounding, then empirical bias correction. Aiming at the preset, each is kept only when the held-out
    result comes nearer it (its shortfall); with a budget, when the budget's measure improves without a new
    preset failure. Each step is reported with its time. ``ranges`` is updated in place when equalization is
    kept."""
    feeds = _first_samples(batches, TIER2_SAMPLES)
    start = time.perf_counter()

    def left() -> float | None:
        return None if options.time_budget is None else max(0.0, options.time_budget - (time.perf_counter() - start))

    aiming = report.budget is None
    failures, shortfall = diff.failures, [diff.shortfall()]  # the all-int8 file's, as judged by the caller

    def judged(name: str, summary: str, t0: float) -> bool:
        nonlocal best, failures
        model = build(ranges, keep)[0]
        score, diff = judge.score_and_preset(model, name)
        now = diff.failures
        seconds = time.perf_counter() - t0
        report.seconds[name] = seconds
        # aiming at the preset: kept when it comes nearer (the shortfall of what it misses); with a budget:
        # when the budget's own measure (top-1, centred SQNR) improves
        kept_it = diff.shortfall() < shortfall[0] if aiming else \
            score.key() > best.key() and len(now) <= len(failures)
        if kept_it:
            shortfall[0] = diff.shortfall()
        report.steps.append({**_step(name, score, now, 0), "kept": kept_it, "seconds": round(seconds, 2),
                             "summary": summary})
        report.notes.append(summary + ("" if kept_it else ": not kept (the held-out result came no nearer the aim)"))
        if kept_it:
            best, failures = score, now
        return kept_it

    def met() -> bool:
        return _meets(judge, best, options) if report.budget is not None else not failures

    if equalized is not None:
        t0 = time.perf_counter()
        model, measured, found = equalized()
        if not found.pairs:
            report.notes.append(found.summary())
        else:
            before, original, cached = dict(ranges), fp32, dict(quantized_weights)
            ranges.update(measured)
            use_base(model)
            quantized_weights.clear()  # the cache holds the weights before equalization
            fp32 = model
            if not judged("cross-layer equalization", found.summary(), t0):
                ranges.clear()
                ranges.update(before)
                use_base(original)
                quantized_weights.clear()
                quantized_weights.update(cached)
                fp32 = original
        if met():
            return best, failures

    from ..passes.gptq import gptq_weights, input_tensors

    t0 = time.perf_counter()
    layers = [n for n in plan.weighted if n not in keep]
    session = cpu_session(with_outputs(fp32, input_tensors(fp32, layers)), options.threads)
    rounding = gptq_weights(fp32, layers, feeds, lambda feed, outs: run_function(session, outs)(feed),
                            time_budget=left(), progress=say)
    saved = dict(quantized_weights)
    quantized_weights.update(rounding.weights)
    if rounding.weights and not judged("GPTQ rounding", rounding.summary(), t0):
        quantized_weights.clear()
        quantized_weights.update(saved)
    if met():
        return best, failures  # the aim is met: no need for more
    if left() is not None and left() <= 0:
        report.notes.append("bias correction skipped: --time-budget spent")
        return best, failures
    t0 = time.perf_counter()
    found = _bias_correction(fp32, plan, ranges, keep, _first_samples(feeds, BIAS_SAMPLES), options, build, say,
                             left())
    corrections.update(found.corrections)
    if found.corrections and not judged("bias correction", found.summary(), t0):
        corrections.clear()
    return best, failures


def _first_samples(batches: list[dict[str, np.ndarray]], samples: int) -> list[dict[str, np.ndarray]]:
    """The leading runs of ``batches`` that hold ``samples`` samples (whole runs; at least one)."""
    out, count = [], 0
    for batch in batches:
        if out and count >= samples:
            break
        out.append(batch)
        count += len(next(iter(batch.values())))
    return out


def _bias_correction(fp32, plan: QdqPlan, ranges, keep: set[str], feeds, options: QuantizeOptions, build, say,
                     time_budget: float | None):
    """Empirical bias correction of the int8 file as built now (passes/bias_correction.py), one layer per run:
    measured in waves instead, the corrections compound (mobilenet_v2 here: mean channel shift 0.048 → 0.50)."""
    int8, _, used = build(ranges, keep)

    def load(model):
        session = cpu_session(model, options.threads)
        return lambda feed, outputs: run_function(session, outputs)(feed)

    return measure_corrections(fp32, int8, used.weighted, feeds, load, waves=len(used.weighted), sweeps=1,
                               time_budget=time_budget, progress=say)


def _step(name: str, score: Score, failures: list[str], kept: int) -> dict:
    return {"step": name, "centred_sqnr_db": score.centred_sqnr_db if math.isfinite(score.centred_sqnr_db) else None,
            "top1_agreement": score.top1_agreement, "accuracy": score.accuracy, "kept_in_float": kept,
            "preset_failures": list(failures)}


def _layer_macs(fp32: onnx.ModelProto, plan: QdqPlan, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Multiply-accumulates per sample of each quantizable layer: output elements × (weight size / output
    channels), from ONNX shape inference at the held-out data's input shape (0 where a shape is unknown)."""
    model = _copy(fp32)
    for graph_input in model.graph.input:
        if graph_input.name in feeds:
            dims = graph_input.type.tensor_type.shape.dim
            for d, size in zip(dims, (1, *feeds[graph_input.name].shape[1:]), strict=False):
                d.Clear()
                d.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a help here, never a reason to fail
        return {layer: 0 for layer in plan.weighted}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output)}
    weights = {i.name: list(i.dims) for i in fp32.graph.initializer}
    macs = {}
    for node in fp32.graph.node:
        if node.name not in plan.weighted:
            continue
        out, w = shapes.get(node.output[0]), weights.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not w or 0 in out:
            macs[node.name] = 0
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        out_channels = {"Conv": w[0], "ConvTranspose": w[1] if len(w) > 1 else w[0],
                        "Gemm": w[0] if trans_b else w[-1]}.get(node.op_type, w[-1])  # MatMul: (K, N)
        macs[node.name] = int(np.prod(out[1:])) * int(np.prod(w)) // max(1, out_channels)
    return macs


def _fallback(fp32, plan: QdqPlan, ranges, keep: set[str], judge: _Judge, options: QuantizeOptions,
              report: QuantizeReport, build, say, base: Score, meets=None, aim: str | None = None,
              macs: dict[str, int] | None = None) -> tuple[set[str], Score]:
    """Rank fallback units by what keeping each alone in float recovers; keep the most sensitive until the
    budget (or, with ``meets``, another aim such as the preset) holds. Returns the kept set and its score (the
    best found when nothing meets it; ``base`` is the all-int8 result's).

    Units cover everything quantized: each quantized layer (its weights and output in float) and each tensor
    with its own range (``tensor:NAME``: no Q/DQ on it, so its int8 producer and readers run in float too) —
    an Add, Concat or pooling output, a layer's input, the graph input.

    With ``macs`` (the preset's aim), the ranking is scored on the hardest quarter of the held-out data and
    the search stops before more than MAX_FLOAT_MACS of the layers' MACs are in float: int8 must still pay."""
    budget = aim is None
    aim = aim or report.budget
    if meets is None:
        def meets(_model, score):
            return _meets(judge, score, options)
    if len(plan.weighted) < 2:
        if budget:
            report.budget_met = False
        report.notes.append(f"no fallback is possible: the model has one quantizable layer ({aim} not met)")
        return set(keep), base
    ranking = []
    # aiming at the preset, the units are ranked on the hardest quarter of the samples (one run at least)
    ranker = judge.hardest(build(ranges, keep)[0], 0.25) \
        if macs is not None and len(judge.feeds) >= 2 and len(judge.reference) >= 16 else judge
    if ranker is not judge:
        report.notes.append(f"sensitivity ranked on the {len(ranker.reference)} held-out samples the all-int8 "
                            f"result gets most wrong (of {len(judge.reference)})")
    units = [*plan.weighted, *(tensor_unit(t) for t in plan.calibrated), *_elementwise_units(fp32, plan, keep)]
    shortfall = {}
    for i, layer in enumerate(units, 1):
        say(f"sensitivity: {layer} ({i}/{len(units)})")
        model, _, _ = build(ranges, keep | {layer})
        score, diff = ranker.score_and_preset(model, f"float {layer}")
        ranking.append((layer, score))
        shortfall[layer] = diff.shortfall()
    if macs is not None:  # aiming at the preset: nearest the preset first (its own measure), then the score
        ranking.sort(key=lambda item: (-shortfall[item[0]], *item[1].key()), reverse=True)
    else:
        ranking.sort(key=lambda item: item[1].key(), reverse=True)
    # gains against the all-int8 result scored on the same samples as the ranking
    reference = base if ranker is judge else ranker.score(build(ranges, keep)[0], "all int8")
    report.sensitivity = [{"layer": layer, "centred_sqnr_db": round(s.centred_sqnr_db, 3),
                           "sqnr_gain_db": round(s.centred_sqnr_db - reference.centred_sqnr_db, 3),
                           "top1_agreement": s.top1_agreement, "accuracy": s.accuracy,
                           "preset_shortfall": round(shortfall[layer], 4)} for layer, s in ranking]
    if macs is not None:
        return _aim(fp32, plan, ranking, ranges, keep, judge, report, build, say, aim,
                    lambda kept: _float_macs(fp32, plan, kept, macs), sum(macs.values()), base)
    kept, best_kept, best, n = set(keep), set(keep), base, 0
    for layer, score in ranking[:-1]:  # at least one unit stays int8
        if not _leaves_int8(fp32, plan, kept | {layer}):
            continue
        kept, n = kept | {layer}, n + 1
        say(f"fallback: {n} unit(s) in float")
        model, _, _ = build(ranges, kept)
        current = score if n == 1 else judge.score(model, f"{n} in float")
        if current.key() > best.key():
            best, best_kept = current, set(kept)
        if meets(model, current):
            report.budget_met = True
            return kept, current
    report.budget_met = False
    report.notes.append(f"no fallback meets the budget ({aim}): with all but one quantized layer in float the "
                        f"result still falls short")
    return best_kept, best


def _elementwise_neighbours(model: onnx.ModelProto, plan: QdqPlan) -> list[str]:
    """Outputs of the elementwise nodes next to what ``plan`` quantizes: with one of those nodes kept in float
    (:func:`_elementwise_units`), a tensor beside it may need a range of its own."""
    ops = {*ELEMENTWISE_OPS, *UNARY_OPS, *OWN_RANGE_OPS}
    quantized = plan.activations
    graph_outputs = {o.name for o in model.graph.output}
    return [out for node in model.graph.node if node.op_type in ops
            and any(t in quantized for t in (*node.input, *node.output))
            for out in node.output if out not in graph_outputs and out not in plan.constants]


def _elementwise_units(fp32, plan: QdqPlan, keep: set[str]) -> list[str]:
    """In the elementwise placement, each Add/Mul/Sigmoid/Clip… node whose output it quantizes and the convs
    placement does not: kept in float, that node runs as the convs placement runs it (a float island) while the
    layers around it stay int8, each reading on its own range — the step between the two placements."""
    if plan.placement != "elementwise":
        return []
    try:
        convs = plan_qdq(fp32, plan.target, keep, "convs")
    except QuantizeError:
        return []
    producer = {out: node for node in fp32.graph.node for out in node.output}
    units = []
    for tensor in plan.activations:
        node = producer.get(tensor)
        if tensor in convs.activations or tensor in plan.constants or node is None:
            continue
        if node.name not in plan.weighted and node.name not in keep and node.name not in units:
            units.append(node.name)
    return units


MAX_AIM_STEPS = 24  # files judged by mixed precision's search before it gives up


def _leaves_int8(fp32, plan: QdqPlan, kept: set[str]) -> bool:
    """Whether some layer stays quantized with ``kept`` in float (a tensor unit can take several with it)."""
    try:
        return bool(plan_qdq(fp32, plan.target, kept, plan.placement).weighted)
    except QuantizeError:
        return False


def _float_macs(fp32, plan: QdqPlan, kept: set[str], macs: dict[str, int]) -> int:
    """MACs of the quantizable layers that run in float when ``kept`` (layers and tensor units) is."""
    try:
        used = set(plan_qdq(fp32, plan.target, kept, plan.placement).weighted)
    except QuantizeError:  # nothing left to quantize
        used = set()
    return sum(v for k, v in macs.items() if k not in used)


def _aim(fp32, plan: QdqPlan, ranking, ranges, keep: set[str], judge: _Judge, report: QuantizeReport, build, say,
         aim: str, float_macs, total: int, base: Score) -> tuple[set[str], Score]:
    """Mixed precision toward deploy check's preset within the MAC cap: greedy forward selection in ranked
    order. Each unit is tried back in float on top of those kept so far and judged on all the held-out data;
    it stays in float only when the result comes nearer the preset (its shortfall, compare.OutputDiff), so
    the search never walks away from the aim — the preset's cosine is a low percentile over samples, and one
    unit that helps the average can hurt the worst samples. A unit whose float form would break the MAC cap or
    leave nothing in int8 is skipped; at most MAX_AIM_STEPS files are judged. Not reached: the all-int8 result
    is returned unchanged (and judged as it is)."""
    kept, too_costly, tries = set(keep), [], 0
    nearest = judge.preset_diff(build(ranges, kept)[0], "int8").shortfall()
    for unit, _score in ranking:
        candidate = kept | {unit}
        if not _leaves_int8(fp32, plan, candidate):
            continue
        if total and float_macs(candidate) > MAX_FLOAT_MACS * total:
            too_costly.append(unit)
            continue
        if tries >= MAX_AIM_STEPS:
            break
        tries += 1
        say(f"mixed precision: try {tries}, {kept_text(candidate - set(keep))} in float")
        model = build(ranges, candidate)[0]
        score, diff = judge.score_and_preset(model, f"{len(candidate - set(keep))} in float")
        if diff.passed:
            return candidate, score
        if diff.shortfall() < nearest:
            kept, nearest = candidate, diff.shortfall()
    why = f"{tries} file(s) tried, {kept_text(kept - set(keep)) or 'nothing'} in float at the nearest"
    if too_costly:
        why += (f"; {len(too_costly)} other sensitive unit(s) cost too much in float ({', '.join(too_costly[:3])}"
                f"{', …' if len(too_costly) > 3 else ''}) to keep {1 - MAX_FLOAT_MACS:.0%} of the MACs in int8, "
                f"where int8 still pays")
    report.notes.append(f"mixed precision did not reach {aim}: {why}; the all-int8 result is judged as it is")
    return set(keep), base


def _fp16(fp32: onnx.ModelProto, options: QuantizeOptions, report: QuantizeReport,
          input_name: str, shape, say: Callable[[str], None]) -> onnx.ModelProto:
    from ..passes.fp16 import convert_fp16

    say("converting to fp16")
    result = convert_fp16(_copy(fp32))
    report.pass_report = result.report.to_dict()
    report.notes.extend(result.report.warnings)
    report.chosen = "fp16"
    try:
        held = load_samples(options.eval_data or options.calib, shape, n=options.eval_samples,
                            input_name=input_name)
    except DataSourceError as err:
        raise BadInputError(str(err)) from None
    report.eval_data, report.eval_samples = held.description, len(held.array)
    say("scoring fp16 against fp32 on ONNX Runtime CPU")
    try:
        held_batches = _batches(held.array, input_name, options.batch or SCORING_BATCH, options.fixed_batch)
        judge = _Judge(fp32, held_batches, held.labels, options.threads)
        report.fp32_accuracy = judge.fp32_accuracy
        report.final = judge.score(result.model, "fp16")
        report.scores = [report.final]
        report.preset_failures = judge.preset_failures(result.model, "fp16")
        report.allowed_poor = bool(report.preset_failures) and options.allow_poor
        report.notes.append("scored on ONNX Runtime CPU, which has no float16 Conv/Gemm/pooling kernels: it casts "
                            "them back to float32, so this measures fp16 weights and I/O rounding, not fp16 "
                            "arithmetic (that runs on ort-cuda and TensorRT)")
    except BadInputError as err:
        report.notes.append(f"not scored: ONNX Runtime CPU cannot run this fp16 graph ({err})")
    return result.model
