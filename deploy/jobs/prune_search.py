"""`deploy prune`: structured pruning to a target — a ratio, a MACs budget, or a *measured* latency.

Latency targets are met by measurement, never by a FLOPs model (FLOPs do not predict latency:
reference/pruning.md). Candidates are exported and timed on the target backend, interleaved with the
unpruned model in the same run, so each figure is a paired ratio:

1. *uniform*: the same ratio in every group, at a grid of ratios; the ratio for the target is interpolated
   from the measured curve, then measured again (and corrected once or twice when it misses);
2. *latency-guided*: groups are clustered by the feature-map size they run at; each cluster is pruned
   alone at one ratio and timed, giving its latency saved per MAC removed; clusters that save more time
   per MAC are pruned harder (ratio ∝ that efficiency), and the scale is found as in (1);
3. both finalists are timed together against the original; the one that meets the target keeping more
   MACs wins (so the guided result is never worse than uniform at the same measured latency).

Channel counts are rounded to a multiple the backend runs fast; ``round_to=None`` measures it
(:func:`measure_round_to`: a 3×3 conv timed at every width of a window, cached per backend and machine).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts.artifact import Artifact, TensorSpec
from ..artifacts.files import jsonable
from ..errors import BadInputError, CheckFailedError
from ..harness.bench import BenchConfig, Warmup, interleave, warm_up
from ..passes.prune import (
    CRITERIA,
    GroupPlan,
    PruneRecord,
    activation_scores,
    apply_record,
    build_record,
    channel_scores,
    ignored_groups,
    plan_uniform,
    prune_report,
)
from ..passes.prune_graph import ChannelGraph, FxTraceError, analyse

TARGETS = ("ratio", "macs", "latency")
LATENCY_TOLERANCE = 0.03  # a measured latency ratio within ±0.03 of the target meets it
MAX_RATIO = 0.9  # no group loses more than 90 % of its channels


@dataclass
class PruneTarget:
    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGETS:
            raise BadInputError(f"unknown target '{self.kind}'; give --ratio, --macs or --latency")
        flag = f"--{self.kind}"
        if not 0 < self.value < 1:
            raise BadInputError(f"{flag} {self.value:g}: give a fraction between 0 and 1 (exclusive), "
                                f"e.g. {flag} {0.3 if self.kind == 'ratio' else 0.5}")

    def describe(self) -> str:
        return {"ratio": f"remove {self.value:.0%} of each group's channels",
                "macs": f"keep {self.value:.0%} of the MACs",
                "latency": f"keep {self.value:.0%} of the latency"}[self.kind]


@dataclass
class PruneSettings:
    target: PruneTarget
    importance: str = "l2"
    round_to: int | None = 1
    ignore: tuple[str, ...] = ()
    backend: str = "ort-cpu"
    batch: int = 8
    threads: int | None = None
    min_time: float = 1.0  # seconds of interleaved timing per candidate group


@dataclass
class Probe:
    """One timed candidate of the latency search."""

    stage: str
    label: str
    macs_kept: float
    latency_ratio: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PruneOutcome:
    model: nn.Module
    record: PruneRecord
    graph: ChannelGraph
    plans: list[GroupPlan]
    prepared: list[str]
    method: str  # uniform, latency-guided
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    round_to: int
    probes: list[Probe] = field(default_factory=list)
    latency: Probe | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def macs_kept(self) -> float:
        return self.macs_after / max(self.macs_before, 1)


def parse_round_to(text: str | int) -> int | None:
    """``--round-to``: a positive integer, or auto (None: measured on the backend)."""
    text = str(text)
    if text == "auto":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise BadInputError(f"--round-to {text}: give a positive integer (8, 16) or auto (measured on the backend)")


# ------------------------------------------------------------------------------------------ preparation


def prepare(model: nn.Module, example: tuple[torch.Tensor, ...], leaves: tuple[str, ...] = ()
            ) -> tuple[nn.Module, ChannelGraph, list[str]]:
    """The form to prune: the model itself, or its structurally reparameterised form when the analysis can
    follow more of that one (DBB's BN-padding reads BN parameters as tensors, which freezes its branches).
    Returns the module, its channel graph and the preparation steps (replayed on reload)."""
    graph = analyse(model, example, leaves)
    from ..passes.reparam import reparameterize

    try:
        converted = reparameterize(model.eval(), fuse_bn=False)
        if not converted.report.sites:
            return model, graph, []
        alt = analyse(converted.model, example, leaves)
    except Exception:  # a block whose fuse() refuses, or a converted form fx cannot trace: the form we have
        return model, graph, []
    if _prunable_macs(alt) > _prunable_macs(graph) * 1.05:
        return converted.model, alt, ["reparameterize"]
    return model, graph, []


def _prunable_macs(graph: ChannelGraph) -> int:
    producers = {name for g in graph.prunable() for name in g.producers}
    return sum(graph.module_macs.get(name, 0) for name in producers)


# ------------------------------------------------------------------------------------------ MACs


def macs_after(graph: ChannelGraph, record: PruneRecord, model: nn.Module) -> int:
    """MACs of the pruned model from the record, without building it: each Conv/Linear scales by its kept
    fraction of output and input channels (a depthwise conv by its channels only)."""
    names = dict(model.named_modules())
    total = 0
    for name, macs in graph.module_macs.items():
        roles = record.modules.get(name, {})
        sizes = record.sizes.get(name, {})
        f_out = len(roles["out"]) / sizes["out"] if "out" in roles else 1.0
        f_in = len(roles["in"]) / sizes["in"] if "in" in roles else 1.0
        module = names.get(name)
        depthwise = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups > 1
        total += macs * (f_out if depthwise else f_out * f_in)
    return int(round(total))


def _cluster_ratios(graph: ChannelGraph, cluster_of: dict[int, int], scale: float, weights: dict[int, float]
                    ) -> dict[int, float]:
    return {g.id: min(MAX_RATIO, max(0.0, scale * weights.get(cluster_of[g.id], 1.0))) for g in graph.prunable()}


# ------------------------------------------------------------------------------------------ driver


class Pruner:
    """Holds the analysed model, its importance scores and a way to time candidates."""

    def __init__(self, artifact: Artifact, settings: PruneSettings, calibration: Sequence[torch.Tensor],
                 say: Callable[[str], None] | None = None) -> None:
        self.artifact = artifact
        self.settings = settings
        self.say = say or (lambda _msg: None)
        self.example = tuple(torch.zeros(s) for s in artifact.example_shapes)
        self.say("tracing the channel dependencies")
        try:
            self.model, self.graph, self.prepared = prepare(artifact.module.eval(), self.example,
                                                            tuple(settings.ignore))
        except FxTraceError as err:
            raise BadInputError(f"{artifact.label}: {err}") from None
        if settings.importance not in CRITERIA:
            raise BadInputError(f"--importance {settings.importance}: choose one of {', '.join(CRITERIA)}")
        self.skip, unmatched = ignored_groups(self.model, self.graph, settings.ignore)
        if unmatched:
            raise BadInputError(f"--ignore {', '.join(unmatched)}: matches no layer of {artifact.label} "
                                f"(names as in model.named_modules(), globs allowed, e.g. 'layer4.*')")
        if not self.graph.prunable():
            raise BadInputError(f"{artifact.label}: no channel group can be pruned — "
                                f"{self._frozen_summary() or 'every group is frozen'}")
        acts = None
        if settings.importance == "activation":
            self.say("activation importance on the calibration data")
            acts = activation_scores(self.model, self.graph, calibration)
        self.scores = channel_scores(self.model, self.graph, settings.importance, acts)
        self.macs0 = sum(self.graph.module_macs.values())
        self.probes: list[Probe] = []
        self.notes: list[str] = []

    def _frozen_summary(self) -> str:
        reasons = [r for g in self.graph.groups if g.producers for r in g.frozen if r != "a graph output"]
        return f"the first reason: {reasons[0]}" if reasons else ""

    # --- plans
    def plan(self, ratio: float | dict[int, float], round_to: int) -> tuple[list[GroupPlan], PruneRecord, float]:
        plans = plan_uniform(self.graph, self.scores, ratio, round_to, self.skip)
        record = build_record(self.model, self.graph, plans)
        return plans, record, macs_after(self.graph, record, self.model) / max(self.macs0, 1)

    def build(self, record: PruneRecord) -> nn.Module:
        pruned = copy.deepcopy(self.model)
        apply_record(pruned, record)
        return pruned.eval()

    def ratio_for_macs(self, keep: float, round_to: int, weights: dict[int, float] | None = None,
                       cluster_of: dict[int, int] | None = None) -> float:
        """The uniform ratio (or cluster scale) whose plan keeps ``keep`` of the MACs, by bisection."""
        lo, hi = 0.0, MAX_RATIO / max(weights.values()) if weights else MAX_RATIO
        def kept(x: float) -> float:
            return self.plan(_cluster_ratios(self.graph, cluster_of, x, weights) if weights else x, round_to)[2]

        for _ in range(24):
            mid = (lo + hi) / 2
            if kept(mid) > keep:
                lo = mid
            else:
                hi = mid
        # rounding makes the curve a staircase: the budget is met from below when a step lands close enough
        return hi if kept(hi) >= 0.9 * keep else min((lo, hi), key=lambda x: abs(kept(x) - keep))

    # --- timing
    def time_candidates(self, stage: str, candidates: list[tuple[str, nn.Module, float]]) -> list[Probe]:
        """Time the candidates interleaved with the unpruned model; one Probe each (paired ratio, 95 % CI)."""
        from ..harness.bench import measure_group, resolve_entries

        s = self.settings
        config = BenchConfig(batches=(s.batch,), threads=s.threads, warmup=Warmup(runs=3), min_runs=8,
                             min_time=s.min_time * (1 + len(candidates)) / 2, max_time=120.0, memory="off",
                             gap=0.0)
        specs = [("original", dataclasses.replace(self.artifact, module=self.model, label="original"))]
        specs += [(label, dataclasses.replace(self.artifact, module=m, label=label)) for label, m, _ in candidates]
        notes: list[str] = []
        self.say(f"{stage}: timing {len(candidates)} candidate(s) against the original on {s.backend}, "
                 f"batch {s.batch}")
        with contextlib.ExitStack() as stack:
            entries = resolve_entries(specs, [s.backend], stack, notes)
            results = measure_group(entries, s.batch, config, stage, notes)
        probes = []
        for (label, _, kept), result in zip(candidates, results[1:]):
            r = result.ratio
            probes.append(Probe(stage, label, kept, r.ratio, r.low, r.high))
        self.probes.extend(probes)
        return probes

    # --- targets
    def run(self) -> PruneOutcome:
        s = self.settings
        round_to = s.round_to if s.round_to is not None else measure_round_to(s.backend, s.batch, s.threads, self.say)
        if s.target.kind == "ratio":
            plans, record, _ = self.plan(s.target.value, round_to)
            return self._outcome(plans, record, "uniform", round_to)
        if s.target.kind == "macs":
            while True:
                r = self.ratio_for_macs(s.target.value, round_to)
                plans, record, kept = self.plan(r, round_to)
                met = 0.9 * s.target.value <= kept <= s.target.value + 0.005  # a budget, met from below
                if met or s.round_to is not None or round_to == 1:
                    break
                self.notes.append(f"multiples of {round_to} step past --macs {s.target.value:g} (closest "
                                  f"{kept:.1%}); using multiples of {round_to // 2}")
                round_to //= 2
            if not met:
                raise CheckFailedError(f"FAILED: --macs {s.target.value:g} cannot be met with --round-to "
                                       f"{round_to}: the closest reached keeps {kept:.1%} of the MACs; nothing "
                                       f"written (a smaller --round-to gives finer steps)")
            return self._outcome(plans, record, "uniform", round_to)
        return self._latency(round_to)

    def _search(self, stage: str, make: Callable[[float], tuple[list[GroupPlan], PruneRecord, float]],
                grid: Sequence[float]) -> tuple[float, Probe, list[GroupPlan], PruneRecord]:
        """Measure ``make(x)`` on a grid, interpolate the x for the target latency, measure it, correct."""
        target = self.settings.target.value
        built = [(x, *make(x)) for x in grid]
        probes = self.time_candidates(f"{stage} grid", [(f"{stage} {x:.2f}", self.build(rec), kept)
                                                        for x, _, rec, kept in built])
        points = sorted([(0.0, 1.0)] + [(x, p.latency_ratio) for (x, *_), p in zip(built, probes)])
        x = _interpolate(points, target)
        best = None
        for attempt in range(3):
            plans, record, kept = make(x)
            probe = self.time_candidates(stage, [(f"{stage} {x:.3f}", self.build(record), kept)])[0]
            points = sorted(points + [(x, probe.latency_ratio)])
            if best is None or abs(probe.latency_ratio - target) < abs(best[1].latency_ratio - target):
                best = (x, probe, plans, record)
            if abs(probe.latency_ratio - target) <= LATENCY_TOLERANCE:
                break
            x = _interpolate(points, target)
            self.say(f"{stage}: measured {probe.latency_ratio:.3f}, aiming again at {x:.3f} (attempt {attempt + 2})")
        return best

    def _latency(self, round_to: int) -> PruneOutcome:
        target = self.settings.target.value
        grid = [0.15, 0.3, 0.45, 0.6]
        _, uprobe, uplans, urecord = self._search("uniform", lambda r: self.plan(r, round_to), grid)

        # per-cluster efficiency: latency saved per MAC removed, each cluster pruned alone at 0.5
        cluster_of, clusters = self._clusters()
        weights: dict[int, float] = {}
        guided = None
        if len(clusters) > 1:
            alone = []
            for c, ids in clusters.items():
                ratios = {gid: (0.5 if gid in ids else 0.0) for gid in cluster_of}
                plans, record, kept = self.plan(ratios, round_to)
                alone.append((c, kept, record))
            probes = self.time_candidates("cluster sensitivity", [(f"cluster {c}", self.build(rec), kept)
                                                                  for c, kept, rec in alone])
            eff = {}
            for (c, kept, _), p in zip(alone, probes):
                eff[c] = max(1e-3, 1 - p.latency_ratio) / max(1e-3, 1 - kept)
            mean = sum(eff.values()) / len(eff)
            weights = {c: min(3.0, max(0.2, e / mean)) for c, e in eff.items()}
            self.notes.append("latency saved per MAC removed, by cluster: " +
                              ", ".join(f"{c}: {weights[c]:.2f}×" for c in sorted(weights)))

            def make(scale: float):
                return self.plan(_cluster_ratios(self.graph, cluster_of, scale, weights), round_to)

            gscale, gprobe, gplans, grecord = self._search("latency-guided", make,
                                                          [x / max(weights.values()) * 1.0 for x in grid])
            guided = (gprobe, gplans, grecord)

        # the finalists side by side
        finalists = [("uniform", uplans, urecord)]
        if guided:
            finalists.append(("latency-guided", guided[1], guided[2]))
        final = self.time_candidates("final", [(name, self.build(rec), macs_after(self.graph, rec, self.model)
                                                / self.macs0) for name, _, rec in finalists])
        ok = [(p, f) for p, f in zip(final, finalists) if abs(p.latency_ratio - target) <= LATENCY_TOLERANCE
              or p.latency_ratio <= target]
        if not ok:
            closest = min(final, key=lambda p: abs(p.latency_ratio - target))
            raise CheckFailedError(f"FAILED: --latency {target:g} not met on {self.settings.backend}: the closest "
                                   f"measured is {closest.latency_ratio:.3f}× ({closest.label}, keeps "
                                   f"{closest.macs_kept:.1%} of the MACs); nothing written")
        probe, (method, plans, record) = max(ok, key=lambda pf: pf[0].macs_kept)
        outcome = self._outcome(plans, record, method, round_to)
        outcome.latency = probe
        return outcome

    def _clusters(self) -> tuple[dict[int, int], dict[int, set[int]]]:
        """Groups by the spatial size of their first producer's output (the stage of the net they run in)."""
        shapes: dict[str, int] = {}
        hooks = []
        names = dict(self.model.named_modules())
        for g in self.graph.prunable():
            for p in g.producers[:1]:
                def hook(_m, _i, out, key=p):
                    shapes[key] = int(np.prod(out.shape[2:])) if out.ndim > 2 else 1
                hooks.append(names[p].register_forward_hook(hook))
        with torch.no_grad():
            self.model(*self.example)
        for h in hooks:
            h.remove()
        cluster_of = {g.id: shapes.get(g.producers[0], 1) for g in self.graph.prunable()}
        clusters: dict[int, set[int]] = {}
        for gid, c in cluster_of.items():
            clusters.setdefault(c, set()).add(gid)
        return cluster_of, clusters

    def _outcome(self, plans: list[GroupPlan], record: PruneRecord, method: str, round_to: int) -> PruneOutcome:
        pruned = self.build(record)
        report = prune_report(self.model, pruned, self.graph, plans, self.example, 0.0, record, self.skip)
        return PruneOutcome(pruned, record, self.graph, plans, self.prepared, method, report.before["macs"],
                            report.after["macs"], report.before["params"], report.after["params"], round_to,
                            list(self.probes), None, list(self.notes))


def _interpolate(points: list[tuple[float, float]], target: float) -> float:
    """x where the measured (x, latency ratio) curve crosses ``target`` (latency falls as x grows)."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if (y0 - target) * (y1 - target) <= 0 and y0 != y1:
            return x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    # beyond the measured range: extrapolate from the last two points, within the allowed ratios
    (x0, y0), (x1, y1) = points[-2], points[-1]
    slope = (y1 - y0) / (x1 - x0) if x1 != x0 else -1.0
    return float(min(MAX_RATIO, max(0.01, x1 + (target - y1) / slope if slope else x1)))


# ------------------------------------------------------------------------------------------ round-to


def _round_to_cache() -> Path:
    from ..artifacts.files import default_cache_dir

    return default_cache_dir() / "round_to.json"


def measure_round_to(backend: str, batch: int, threads: int | None, say: Callable[[str], None] | None = None,
                     refresh: bool = False) -> int:
    """The channel multiple ``backend`` runs fast: a 3×3 conv (128 in, 14×14 at batch 8, larger at smaller
    batches) timed at every output width
    from 64 to 129 (:func:`choose_round_to` reads the steps). Cached per backend,
    batch, threads and machine in ``~/.cache/deploy/round_to.json``."""
    import platform

    import onnxruntime

    machine = platform.processor() or platform.machine()
    key = f"v4|{backend}|b{batch}|t{threads}|{machine}|ort{onnxruntime.__version__}|torch{torch.__version__}"
    path = _round_to_cache()
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache and not refresh:
        return int(cache[key]["round_to"])
    (say or (lambda _m: None))(f"measuring the channel multiple {backend} runs fast (once per machine)")
    widths = list(range(64, 130))
    # the same work per run at every batch (8 × 14×14 positions): at batch 1 a 14×14 conv is so small that
    # fixed costs hide the kernel's blocking
    side = max(7, int(round(14 * math.sqrt(8 / batch))))
    cost = _time_widths(backend, batch, threads, widths, side)
    choice = choose_round_to(cost)
    per = {w: cost[w] for w in widths}
    cache[key] = {"round_to": choice, "conv_us": {str(w): round(per[w] * 1e6, 3) for w in widths},
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        from ..artifacts.files import write_text_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(jsonable(cache), indent=1, allow_nan=False))
    except OSError:
        pass
    return choice


def choose_round_to(cost: dict[int, float], threshold: float = 1.05) -> int:
    """The block a kernel pads channels to, from its time at consecutive widths. Time steps up just past
    each multiple of the block and stays flat within it, so the jump t(w+1)/t(w) is large at multiples of
    the block. Every multiple of a larger power of two is a multiple of the block too, so r is taken only
    when the odd multiples of r/2 do *not* jump (else r/2 is the block): the largest r of 32, 16, …, 2 whose
    multiples' median jump is ``threshold`` × the median jump at non-multiples; 1 when none is."""
    widths = sorted(cost)
    jump = {w: cost[w + 1] / cost[w] for w in widths if w + 1 in cost}

    def jumps(select) -> bool:
        at = [j for w, j in jump.items() if select(w)]
        rest = [j for w, j in jump.items() if not select(w) and w % 2]
        return len(at) >= 2 and bool(rest) and float(np.median(at)) >= threshold * float(np.median(rest))

    for r in (32, 16, 8, 4, 2):
        if not jumps(lambda w, r=r: w % r == 0):
            continue
        half = r // 2
        if half >= 2 and jumps(lambda w, h=half: w % h == 0 and (w // h) % 2 == 1):
            continue  # the odd multiples of r/2 jump too: the block is smaller
        return r
    return 1


WIDTH_TIMING = BenchConfig(min_runs=12, min_time=0.0, max_time=30.0, gap=0.0)  # 12 rounds of the bench's timer


def _time_widths(backend: str, batch: int, threads: int | None, widths: list[int], side: int = 14
                 ) -> dict[int, float]:
    """Fastest of 12 runs of one 3×3 conv + ReLU at each output width, timed by the bench's interleaved timer.
    On an ONNX backend each conv goes through the shared converter with every dim fixed and no simplification,
    as the probe has always been written (the same round-to as the earlier hand-written export and loop, side by
    side here: 32 at batch 1, 16 at batch 8)."""
    import tempfile

    from ..artifacts.onnx_export import convert_artifact
    from ..artifacts.spec import load_onnx_artifact
    from ..backends import get_runner_class

    cls = get_runner_class(backend)
    feeds = {"input": np.random.default_rng(0).standard_normal((batch, 128, side, side)).astype(np.float32)}
    timers = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deploy-rt-")))
        for w in widths:
            conv = nn.Sequential(nn.Conv2d(128, w, 3, padding=1), nn.ReLU()).eval()
            art = Artifact(f"conv{w}", "torch", [TensorSpec("input", (batch, 128, side, side))], module=conv,
                           example_shapes=[(batch, 128, side, side)])
            if cls.artifact_kind == "onnx":
                (folder / f"{w}").mkdir()
                convert_artifact(art, folder / f"{w}" / "conv.onnx", dynamic=(), simplify=False)
                art = load_onnx_artifact(folder / f"{w}" / "conv.onnx")
            runner = stack.enter_context(cls(art, threads=threads, allow_spinning=False))
            timers.append(runner.timer(feeds))
        for timer in timers:
            warm_up(timer, Warmup(runs=3))
        times, _ = interleave(timers, WIDTH_TIMING)
    return {w: float(np.min(t)) for w, t in zip(widths, times)}  # the least disturbed run: a shared machine adds delays


def default_finetune_epochs(samples: int) -> int:
    """About 20 k sample-steps, between 3 and 30 epochs."""
    return int(min(30, max(3, math.ceil(20000 / max(samples, 1)))))
