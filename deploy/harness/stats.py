"""Latency statistics and ratio confidence intervals for `deploy bench`.

Percentiles use linear interpolation between order statistics (numpy's default, "type 7").
Ratios between two artifacts come from rounds in which both ran back to back (A B A B …): the
ratio is the median of the per-round ratios t_x[r] / t_ref[r], so drift of the machine, which
hits both members of a round alike, cancels; its confidence interval is a percentile bootstrap
over rounds (resampling rounds with replacement, seeded, so a report is reproducible).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Seconds per run (one batch)."""

    n: int
    median: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(seconds: Sequence[float]) -> LatencyStats:
    t = np.asarray(seconds, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timings to summarize")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return LatencyStats(int(t.size), float(p50), float(p90), float(p99), float(t.mean()),
                        float(t.std(ddof=1)) if t.size > 1 else 0.0, float(t.min()), float(t.max()))


@dataclass(frozen=True)
class RatioEstimate:
    """ratio = median of per-round ratios; [low, high] its bootstrap interval at ``confidence``."""

    ratio: float
    low: float
    high: float
    confidence: float
    rounds: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_ratio(
    times: Sequence[float],
    reference: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> RatioEstimate:
    """Ratio of ``times`` to ``reference`` measured in the same rounds (equal lengths)."""
    x = np.asarray(times, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if x.shape != r.shape or x.size == 0:
        raise ValueError(f"paired timings need equal, non-empty lengths: {x.shape} vs {r.shape}")
    per_round = x / r
    point = float(np.median(per_round))
    if per_round.size == 1:
        return RatioEstimate(point, point, point, confidence, 1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, per_round.size, size=(resamples, per_round.size))
    boot = np.median(per_round[picks], axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return RatioEstimate(point, float(low), float(high), confidence, int(per_round.size))


def ratio_verdict(ratio: float, low: float, high: float) -> str:
    """A time ratio (candidate / reference) in words, never claiming what its interval does not show:
    '1.62× faster [1.55–1.70]', 'not faster: ×1.01 of the reference's time [0.97–1.05], the interval spans 1',
    or '1.40× slower [1.31–1.52]'."""
    if high < 1.0:
        return f"{1 / ratio:.2f}× faster [{1 / high:.2f}–{1 / low:.2f}]"
    if low <= 1.0:
        return f"not faster: ×{ratio:.2f} of the time [{low:.2f}–{high:.2f}], the interval spans 1"
    return f"{ratio:.2f}× slower [{low:.2f}–{high:.2f}]"


def balanced_orders(k: int) -> list[list[int]]:
    """Run orders for k interleaved entries in which each entry directly follows every other entry
    equally often (a Williams design: carryover-balanced Latin square; doubled with its mirror for
    odd k). Rotation alone is not enough: one entry would follow a given other one in most rounds,
    and a runtime whose threads linger after a run slows whoever comes next."""
    if k < 1:
        raise ValueError("need at least one entry")
    first, low, high = [0], 1, k - 1
    while len(first) < k:  # 0, 1, k-1, 2, k-2, …
        first.append(low)
        low += 1
        if len(first) < k:
            first.append(high)
            high -= 1
    rows = [[(x + i) % k for x in first] for i in range(k)]
    if k % 2:
        rows += [row[::-1] for row in rows]
    return rows


def is_stable(seconds: Sequence[float], window: int = 5, tolerance: float = 0.05) -> bool:
    """True when the median of the last ``window`` runs is within ``tolerance`` of the window before."""
    if len(seconds) < 2 * window:
        return False
    last = float(np.median(seconds[-window:]))
    before = float(np.median(seconds[-2 * window:-window]))
    return abs(last - before) <= tolerance * before
