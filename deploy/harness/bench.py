"""`deploy bench`: latency of artifacts on backends, measured side by side.

ONNX Runtime's worker threads spin after a run by default; in one process with other runners they
take the cores from whatever runs next (measured here, 2 cores: PyTorch resnet18 40 ms beside a spinning
session, 18 ms beside a quiet one). Sessions are therefore created with spinning off unless asked.
PyTorch's OpenMP workers also linger for a few ms after a run: ONNX Runtime right behind them ran at
13 ms instead of 9 in a third to a half of the rounds. A 10 ms idle gap before each timed run
(``gap``) brought that to 3 %; 2 ms did not.

For each batch size, the entries of a group (every artifact × backend, or with ``per_artifact`` each
artifact's backends alone) are loaded, each warmed up until its latency is stable (its memory is
measured then, alone), and then timed in *rounds*: one run of every entry per round, in orders
where each entry follows every other equally often (stats.balanced_orders), so neither drift nor a
neighbour's lingering threads favour one.
Rounds go on until there are ``min_runs`` of them and ``min_time`` seconds have passed (or
``max_time`` is reached). Ratios to the group's first entry come from the rounds (see stats.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..artifacts.artifact import Artifact
from ..artifacts.inputs import make_feeds
from ..backends import get_runner_class
from ..backends.base import Runner
from ..environment import default_threads, environment
from ..errors import BadInputError, MissingDependencyError, first_line
from ..reporting import Report
from .check import runnable
from .memory import MemoryWatch, job_for, measure_fresh
from .stats import LatencyStats, RatioEstimate, balanced_orders, is_stable, paired_ratio, summarize


@dataclass(frozen=True)
class Warmup:
    """``auto``: until stable (at least 10 runs or 1 s, and the median of the last 3 runs within 5 % of
    the 3 before); else a fixed number of runs or seconds."""

    runs: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> Warmup:
        text = text.strip().lower()
        if text == "auto":
            return cls()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*s", text)
        if match:
            return cls(seconds=float(match.group(1)))
        if text.isdigit():
            return cls(runs=int(text))
        raise BadInputError(f"--warmup '{text}': give auto, a number of runs (20) or seconds (2s)")

    def describe(self) -> str:
        return f"{self.runs} runs" if self.runs is not None else (
            f"{self.seconds:g} s" if self.seconds is not None else "until stable")


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1,)
    threads: int | None = None
    warmup: Warmup = Warmup()
    min_runs: int = 30
    min_time: float = 3.0
    max_time: float = 60.0
    include_copies: bool = False
    cuda_graphs: bool = False
    per_artifact: bool = False
    ort_spinning: bool = False
    gap: float = 0.010
    seed: int = 0
    memory: str = "fresh"  # fresh: each entry in its own new process (order-independent); inline; off

    def to_dict(self) -> dict:
        return {"batches": list(self.batches), "threads": self.threads, "warmup": self.warmup.describe(),
                "min_runs": self.min_runs, "min_time_s": self.min_time, "max_time_s": self.max_time,
                "include_copies": self.include_copies, "cuda_graphs": self.cuda_graphs,
                "per_artifact": self.per_artifact, "ort_spinning": self.ort_spinning,
                "gap_ms": self.gap * 1e3, "memory": self.memory}


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        batches = ()
    if not batches or any(b < 1 for b in batches):
        raise BadInputError(f"--batch '{text}': give positive integers separated by commas, like 1,8")
    return tuple(dict.fromkeys(batches))


@dataclass
class Entry:
    """One artifact on one backend."""

    label: str
    artifact: Artifact  # in the form the backend runs (torch models exported for ONNX Runtime)
    source: str  # the artifact as the user named it
    backend: str


@dataclass
class BenchResult:
    label: str
    artifact: str
    backend: str
    batch: int
    group: str
    stats: LatencyStats
    warmup_runs: int
    rss_mb: float | None  # peak growth of resident memory while it loaded and warmed up, alone
    device_mb: float | None  # peak drop of free device memory over the same span
    ratio: RatioEstimate | None = None
    baseline: str | None = None
    times: list[float] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.batch / self.stats.median

    def to_dict(self) -> dict:
        return {
            "label": self.label, "artifact": self.artifact, "backend": self.backend, "batch": self.batch,
            "group": self.group,
            "latency_ms": {k: (v * 1e3 if k != "n" else v) for k, v in self.stats.to_dict().items()},
            "throughput_per_s": self.throughput, "warmup_runs": self.warmup_runs,
            "memory": {"rss_mb": self.rss_mb, "device_mb": self.device_mb},
            "ratio_to_baseline": self.ratio.to_dict() if self.ratio else None, "baseline": self.baseline,
            "times_ms": [t * 1e3 for t in self.times],
        }


@dataclass(repr=False)
class LatencyReport(Report):
    environment: dict
    config: BenchConfig
    results: list[BenchResult]
    notes: list[str] = field(default_factory=list)
    max_ratio: float | None = None  # the budget: no entry may take more than this times its group's first

    def regressions(self) -> list[BenchResult]:
        """Entries over ``max_ratio``: judged on the ratio's point estimate (the median of per-round ratios)."""
        if self.max_ratio is None:
            return []
        return [r for r in self.results if r.ratio is not None and r.ratio.ratio > self.max_ratio]

    def compared(self) -> list[BenchResult]:
        return [r for r in self.results if r.ratio is not None]

    @property
    def passed(self) -> bool:
        """With --max-ratio: no regression, and at least one ratio to judge (a gate that compared nothing
        must not pass)."""
        return self.max_ratio is None or (bool(self.compared()) and not self.regressions())

    def summary(self) -> str:
        entries = f"{len(self.results)} entr{'y' if len(self.results) == 1 else 'ies'}"
        if self.max_ratio is None:
            return f"MEASURED bench: {entries} (no --max-ratio given, so nothing judged)"
        if not self.compared():
            return (f"FAILED bench: --max-ratio {self.max_ratio:g} given, but no entry has a baseline to compare "
                    f"with ({entries}, each alone in its group); give two artifacts or backends")
        bad = self.regressions()
        if not bad:
            worst = max((r.ratio.ratio for r in self.results if r.ratio is not None), default=float("nan"))
            return f"PASSED bench: {entries}, every ratio ≤ --max-ratio {self.max_ratio:g} (highest {worst:.3f})"
        detail = "; ".join(f"{r.label} batch {r.batch} ratio {format_ratio(r)}" for r in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        return f"FAILED bench: {len(bad)} of {entries} over --max-ratio {self.max_ratio:g}: {detail}{more}"

    def to_dict(self) -> dict:
        return {"environment": self.environment, "config": self.config.to_dict(),
                "results": [r.to_dict() for r in self.results], "notes": self.notes,
                "max_ratio": self.max_ratio, "passed": self.passed,
                "regressions": [r.label for r in self.regressions()]}

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["label", "artifact", "backend", "batch", "runs", "median_ms", "p90_ms", "p99_ms",
                         "mean_ms", "std_ms", "min_ms", "throughput_per_s", "ratio", "ratio_low", "ratio_high",
                         "baseline", "rss_mb", "device_mb"])
        for r in self.results:
            s = r.stats
            ratio = (r.ratio.ratio, r.ratio.low, r.ratio.high) if r.ratio else ("", "", "")
            writer.writerow([r.label, r.artifact, r.backend, r.batch, s.n, *(f"{v * 1e3:.4f}" for v in (
                s.median, s.p90, s.p99, s.mean, s.std, s.min)), f"{r.throughput:.2f}",
                *(f"{v:.4f}" if v != "" else "" for v in ratio), r.baseline or "",
                "" if r.rss_mb is None else f"{r.rss_mb:.1f}", "" if r.device_mb is None else f"{r.device_mb:.1f}"])
        return buffer.getvalue()

    def to_markdown(self) -> str:
        cpu = self.environment["cpu"]
        lines = [
            "| artifact | backend | batch | median ms | p90 ms | p99 ms | items/s | ratio (95% CI) | RSS MB |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for r in self.results:
            lines.append(f"| {r.artifact} | {r.backend} | {r.batch} | {r.stats.median * 1e3:.2f} | "
                         f"{r.stats.p90 * 1e3:.2f} | {r.stats.p99 * 1e3:.2f} | {r.throughput:.1f} | "
                         f"{format_ratio(r)} | {'-' if r.rss_mb is None else f'{r.rss_mb:.0f}'} |")
        lines += ["", f"CPU: {cpu['model']} ({', '.join(cpu['flags']) or 'no AVX-512/VNNI/AMX'}), "
                      f"{self.environment['threads']} threads. Ratios: median of per-round ratios to the "
                      "group's first entry; 95% bootstrap interval.", ""]
        return "\n".join(lines)


def format_ratio(result: BenchResult) -> str:
    if result.ratio is None:
        return "baseline"
    r = result.ratio
    return f"{r.ratio:.3f} [{r.low:.3f}, {r.high:.3f}]"


def warm_up(timer: Callable[[], float], warmup: Warmup, cap_seconds: float = 30.0, cap_runs: int = 500,
            after_run: Callable[[], None] | None = None) -> int:
    """Run until warm (see :class:`Warmup`); returns the number of runs."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        times.append(timer())
        if after_run:
            after_run()
        elapsed = time.perf_counter() - start
        if warmup.runs is not None and len(times) >= warmup.runs:
            break
        if warmup.seconds is not None and elapsed >= warmup.seconds:
            break
        if warmup.runs is None and warmup.seconds is None:
            enough = len(times) >= 10 or elapsed >= 1.0
            if enough and is_stable(times, window=3):
                break
        if elapsed >= cap_seconds or len(times) >= cap_runs:
            break
    return len(times)


def interleave(timers: list[Callable[[], float]], config: BenchConfig,
               progress: Callable[[int, float], None] | None = None) -> tuple[list[list[float]], int]:
    """The one interleaved timer: every timer once per round, rounds ordered as a Williams design (each entry
    follows every other equally often), ``config.gap`` idle before each run, until ``config.min_runs`` rounds
    and ``config.min_time`` seconds, or ``config.max_time``. Returns (seconds per run for each timer, rounds);
    :func:`deploy.harness.stats.paired_ratio` turns two of them into a ratio with its interval."""
    times: list[list[float]] = [[] for _ in timers]
    orders = balanced_orders(len(timers))
    start, rounds = time.perf_counter(), 0
    while True:
        for index in orders[rounds % len(orders)]:
            if config.gap:
                time.sleep(config.gap)
            times[index].append(timers[index]())
        rounds += 1
        elapsed = time.perf_counter() - start
        if progress is not None and rounds % 5 == 0:
            progress(rounds, elapsed)
        if (rounds >= config.min_runs and elapsed >= config.min_time) or elapsed >= config.max_time:
            return times, rounds


def resolve_entries(specs: list[tuple[str, Artifact]], backends: list[str], stack: contextlib.ExitStack,
                    notes: list[str], only: Callable[[str, str], bool] | None = None) -> list[Entry]:
    """Every (artifact, backend) pair that can run: torch models run on ONNX Runtime after an export;
    ONNX files skip torch backends (with a note). ``only(source, backend)``: the pairs a caller wants (the
    pipeline times its bf16 candidate on ov-cpu-bf16 and the rest on ov-cpu, in one group)."""
    for name in backends:
        ok, why = get_runner_class(name).available()
        if not ok:
            raise MissingDependencyError(f"backend {name} unavailable here: {why}")
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for source, artifact in specs:
        for backend in backends:
            if only is not None and not only(source, backend):
                continue
            cls = get_runner_class(backend)
            if artifact.kind == "onnx" and cls.artifact_kind == "torch":
                notes.append(f"{source} skipped on {backend}: an ONNX file runs on ort-*, ov-* and trt backends")
                continue
            if artifact.kind == "ir" and artifact.kind not in cls.also_runs:
                notes.append(f"{source} skipped on {backend}: an OpenVINO IR runs on ov-* only")
                continue
            if artifact.kind == "engine" and artifact.kind not in cls.also_runs:
                notes.append(f"{source} skipped on {backend}: a TensorRT engine runs on trt only")
                continue
            converted, conversion_notes = runnable(artifact, backend, stack)
            notes.extend(conversion_notes)
            label = f"{source} @ {backend}"
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label} #{seen[label]}"
            entries.append(Entry(label, converted, source, backend))
    if not entries:
        raise BadInputError("no artifact can run on the chosen backends (ONNX files need ort-cpu, ov-cpu, ort-cuda or "
                            "trt; engines need trt; OpenVINO IRs need ov-cpu)")
    return entries


def _feeds_for(entry: Entry, batch: int, seed: int) -> dict[str, np.ndarray] | None:
    specs = entry.artifact.inputs
    fixed = [s.shape[0] for s in specs if not s.dynamic_batch]
    if fixed and fixed[0] != batch:
        return None
    return make_feeds(specs, samples=batch, batch=batch, data=None, seed=seed).batches[0]


def measure_group(entries: list[Entry], batch: int, config: BenchConfig, group: str, notes: list[str],
                  tick: Callable[[str], None] | None = None) -> list[BenchResult]:
    """Warm up each entry alone, then time all of them in rotating interleaved rounds."""
    say = tick or (lambda _msg: None)
    threads = config.threads
    with contextlib.ExitStack() as stack:
        timers: list[tuple[Entry, Callable[[], float], int, float | None, float | None]] = []
        for entry in entries:
            feeds = _feeds_for(entry, batch, config.seed)
            if feeds is None:
                notes.append(f"{entry.label} skipped at batch {batch}: its batch dim is fixed")
                continue
            say(f"batch {batch}: warming up {entry.label}")
            memory = MemoryWatch()  # this entry alone: loading it and its warm-up runs
            runner: Runner = stack.enter_context(get_runner_class(entry.backend)(
                entry.artifact, threads=threads, allow_spinning=config.ort_spinning))
            timer = runner.timer(feeds, include_copies=config.include_copies, cuda_graphs=config.cuda_graphs)
            memory.sample()
            runs = warm_up(timer, config.warmup, after_run=memory.sample)
            timers.append((entry, timer, runs, memory.rss_mb, memory.device_mb))
        if not timers:
            return []
        times, rounds = interleave([timer for _, timer, _, _, _ in timers], config,
                                   lambda r, t: say(f"batch {batch}: {r} rounds, {t:.1f} s"))
        if rounds < config.min_runs:
            notes.append(f"batch {batch}, {group}: stopped at --max-time {config.max_time:g} s after {rounds} rounds")
    if config.memory == "fresh":
        timers = [(entry, timer, runs, *_fresh_memory(entry, batch, runs, config, (rss, device), notes, say))
                  for entry, timer, runs, rss, device in timers]
    elif config.memory == "off":
        timers = [(entry, timer, runs, None, None) for entry, timer, runs, _, _ in timers]
    baseline = timers[0][0]
    results = []
    for i, (entry, _, warm_runs, rss, device) in enumerate(timers):
        ratio = None if i == 0 else paired_ratio(times[i], times[0], seed=config.seed)
        results.append(BenchResult(entry.label, entry.source, entry.backend, batch, group, summarize(times[i]),
                                   warm_runs, rss, device, ratio, None if i == 0 else baseline.label, times[i]))
    return results


MEMORY_MODES = ("fresh", "inline", "off")


def _fresh_memory(entry: Entry, batch: int, runs: int, config: BenchConfig, inline: tuple, notes: list[str],
                  say: Callable[[str], None]) -> tuple[float | None, float | None]:
    """The entry's memory in a new process (deploy.harness.memory); the in-process figure, with a note, when the
    artifact cannot be loaded again there."""

    job = job_for(entry.artifact, entry.backend, batch, config.threads, runs, config.seed, config.ort_spinning)
    if job is None:
        notes.append(f"{entry.label}: memory measured in this process (the model was built in memory)")
        return inline
    say(f"batch {batch}: memory of {entry.label} in a fresh process")
    try:
        return measure_fresh(job)
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as err:
        notes.append(f"{entry.label}: memory measured in this process ({first_line(err)})")
        return inline


def run_bench(specs: list[tuple[str, Artifact]], backends: list[str], config: BenchConfig,
              tick: Callable[[str], None] | None = None,
              only: Callable[[str, str], bool] | None = None) -> LatencyReport:
    threads = config.threads or default_threads()
    config = BenchConfig(**{**config.__dict__, "threads": threads})
    if config.memory not in MEMORY_MODES:
        raise BadInputError(f"--memory {config.memory}: choose from {', '.join(MEMORY_MODES)}")
    notes: list[str] = []
    results: list[BenchResult] = []
    with contextlib.ExitStack() as stack:
        entries = resolve_entries(specs, backends, stack, notes, only)
        if config.per_artifact:
            groups = {}
            for entry in entries:
                groups.setdefault(entry.source, []).append(entry)
        else:
            groups = {"all": entries}
        for batch in config.batches:
            for name, members in groups.items():
                results.extend(measure_group(members, batch, config, name, notes, tick))
    if not results:
        raise BadInputError("nothing was measured: every entry was skipped (see the batch sizes)")
    return LatencyReport(environment(threads), config, results, notes)


def speedup_text(result: BenchResult) -> str:
    """'1.84× faster', '0.72× (slower)', or 'same' when the ratio's interval contains 1: a difference the
    measurement cannot tell from noise is not reported as one."""
    if result.ratio is None or not math.isfinite(result.ratio.ratio) or result.ratio.ratio <= 0:
        return ""
    if result.ratio.low <= 1.0 <= result.ratio.high:
        return "same (interval spans 1)"
    speed = 1.0 / result.ratio.ratio
    return f"{speed:.2f}× faster" if speed >= 1 else f"{speed:.2f}× (slower)"
