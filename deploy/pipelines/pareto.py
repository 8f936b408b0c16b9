"""Per backend: the Pareto front of latency against quality, and the fastest candidate within the budget.

A point is (median latency, quality), quality being what the certificate reads first (accuracy with labels,
else top-1 agreement, else centred SQNR). A candidate is on the front when no other is at least as fast and
at least as good, and strictly better in one. The choice is the fastest within budget by median, among the
int8/fp16 files only those faster than the fp32 export beyond the noise (the 95 % interval of the paired ratio
below 1); when its ratio interval to the baseline overlaps a runner-up's, the report says they are tied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .candidates import Candidate


@dataclass
class Timing:
    """One candidate on one backend, from the interleaved run (ratio: to the fp32 export, same run)."""

    median_ms: float
    p90_ms: float
    ratio: float
    low: float
    high: float
    runs: int

    def to_dict(self) -> dict:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class Choice:
    backend: str
    chosen: str | None
    why: str
    front: list[str] = field(default_factory=list)
    losers: dict[str, str] = field(default_factory=dict)  # candidate → why it lost

    def to_dict(self) -> dict:
        return {"backend": self.backend, "chosen": self.chosen, "why": self.why, "pareto_front": self.front,
                "why_not": self.losers}


def speedup(ratio: float) -> float | None:
    """Latency ratio to fp32 → how many times faster (None for a ratio that is not a positive number)."""
    return 1 / ratio if ratio > 0 and math.isfinite(ratio) else None


def speed_text(t: Timing) -> str:
    """'1.49× [1.34–1.59]': how many times faster than the fp32 export, with the paired ratio's interval."""
    def times(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    return f"{times(speedup(t.ratio))}× [{times(speedup(t.high))}–{times(speedup(t.low))}]"


def quality(candidate: Candidate) -> float:
    if candidate.certificate is None:
        return -math.inf
    value = candidate.certificate.metric()[1]
    return value if math.isfinite(value) else 1e9


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the non-dominated points; each point is (latency, quality): lower latency, higher quality."""
    front = []
    for name, (lat, q) in points.items():
        dominated = any(o_lat <= lat and o_q >= q and (o_lat < lat or o_q > q)
                        for other, (o_lat, o_q) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


REDUCED = ("int8", "fp16", "bf16")  # precisions that change what the model computes: they must pay for it in speed


def choose(backend: str, candidates: list[Candidate], timings: dict[str, Timing]) -> Choice:
    timed = [c for c in candidates if c.name in timings]
    points = {c.name: (timings[c.name].ratio, quality(c)) for c in timed}  # latency as the paired ratio
    front = pareto_front(points)
    # by the paired ratio to fp32 (per-round ratios of the interleaved run), steadier than raw medians
    within = sorted((c for c in timed if c.within_budget), key=lambda c: (timings[c.name].ratio, c.name != "fp32"))
    losers: dict[str, str] = {}
    for c in candidates:
        if not c.built:
            losers[c.name] = f"not built: {c.why_not}"
        elif c.name not in timings:
            why = (c.details.get("not_timed") or {}).get(backend)
            losers[c.name] = f"not timed on {backend}" + (f": {why}" if why else "")
        elif not c.within_budget:
            losers[c.name] = "over budget: " + "; ".join(c.misses)
    if not within:
        return Choice(backend, None, "no candidate is within the budget", front, losers)
    # reduced precision ships only when it is faster than the fp32 export beyond the noise (the whole 95 %
    # interval of its paired ratio below 1): an int8 or fp16 file as fast as fp32 only adds its error
    if any(c.name == "fp32" for c in within):
        for c in [c for c in within if c.precision in REDUCED and timings[c.name].high >= 1.0]:
            o = timings[c.name]
            losers[c.name] = (f"{c.precision} not faster than the fp32 export beyond the noise: ratio {o.ratio:.3f} "
                              f"[95 % CI {o.low:.3f}–{o.high:.3f}]")
            within.remove(c)
    best = within[0]
    t = timings[best.name]
    speed = 1 / t.ratio if t.ratio > 0 else math.inf
    if best.name == "fp32":
        why = "no candidate within the budget is faster than the fp32 export (ratio 1 by definition)"
    else:
        why = (f"fastest within the budget: {t.median_ms:.3f} ms, {speed:.2f}× the fp32 export "
               f"[ratio {t.ratio:.3f}, 95 % CI {t.low:.3f}–{t.high:.3f}]"
               + (" — the interval spans 1: not faster than fp32 beyond the noise" if t.low <= 1 <= t.high else ""))
    for c in within[1:]:
        if c.name in losers:
            continue
        o = timings[c.name]
        tied = o.low <= t.high and t.low <= o.high
        losers[c.name] = (f"slower: ratio {o.ratio:.3f} vs {t.ratio:.3f} ({o.median_ms:.3f} ms vs "
                          f"{t.median_ms:.3f} ms)" + (" — tied within the 95 % intervals" if tied else ""))
    return Choice(backend, best.name, why, front, losers)
