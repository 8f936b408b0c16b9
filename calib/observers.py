"""Activation observers: a one-pass histogram of |x| per tensor, and the range methods that read it.

Calibration pushes every activation of every batch through ``HistogramCollector.update`` (resnet50 on
128 images is ~1e9 floats), so an update is a few vectorised passes over cache-sized chunks, and the
memory per tensor is fixed: ``bins`` counts of |x| over [0, A) plus running min, max and count.

The sign survives only as min and max: a method picks a threshold T on |x|, and the range is
[max(min, −T), min(max, T)], widened to hold 0. A tensor that is ≥ 0 everywhere thus gets [0, T].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 2048
PERCENTILES = {"percentile-99.9": 99.9, "percentile-99.99": 99.99, "percentile-99.999": 99.999}
METHODS: tuple[str, ...] = ("minmax", "percentile", *PERCENTILES, "entropy", "mse")

_CHUNK = 1 << 17  # elements per pass: the float32 and index buffers (1.5 MB) stay in cache
_MAX_SCALE = np.float32(2.0**100)  # bins / A for a subnormal-tiny A would overflow float32


@dataclass(frozen=True)
class TensorHistogram:
    """One tensor's statistics: ``counts[j]`` finite values with |x| in [j·width, (j+1)·width).

    ``width`` is 0 while every finite value seen was 0 (all counted in bin 0). ``min``/``max`` are exact
    over the finite values (+inf/−inf when there were none); ``nonfinite`` NaN/±inf values were ignored.
    """

    counts: np.ndarray
    width: float
    min: float
    max: float
    count: int
    nonfinite: int = 0

    @property
    def edge(self) -> float:
        """A, the upper end of the histogram: bins · width (≥ max |x|)."""
        return len(self.counts) * self.width

    @property
    def amax(self) -> float:
        """max |x| over the finite values (0 when there were none)."""
        return max(-self.min, self.max) if self.count else 0.0


@dataclass(slots=True)
class _Running:
    counts: np.ndarray
    scale: np.float32  # bins / A; bin of |x| is floor(fl32(|x| · scale)); 0 until a nonzero value arrives
    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    nonfinite: int = 0


class HistogramCollector:
    """Histograms of |x| per tensor name, accumulated over batches in bounded memory.

    A is set from the first batch with a nonzero value. A later batch beyond A multiplies A by 2^k and
    sums groups of 2^k bins: since scaling by 2^k is exact in floating point,
    floor(fl(|x|·s/2^k)) = floor(fl(|x|·s)) >> k, so merged counts equal those of a fresh histogram with
    the new A — nothing is lost or moved. Values are histogrammed as float32 (float64 beyond float32's
    range count as non-finite).
    """

    def __init__(self, bins: int = DEFAULT_BINS, max_samples: int | None = None):
        """``max_samples``: histogram at most about this many elements per update, a regular subsample with
        an odd stride (min and max stay exact, over every element). Large activations (ResNet-50's first
        stages hold millions of values per batch) then cost a fraction, and a calibration set still puts
        millions of samples per tensor into the histogram: enough for the 99.999th percentile's tail."""
        if bins < 1:
            raise ValueError(f"bins must be ≥ 1, got {bins}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be ≥ 1, got {max_samples}")
        self.bins = int(bins)
        self.max_samples = max_samples
        self._stats: dict[str, _Running] = {}
        self._abs = np.empty(_CHUNK, np.float32)
        self._index = np.empty(_CHUNK, np.intp)

    def tensors(self) -> list[str]:
        """Names seen so far, in first-seen order."""
        return list(self._stats)

    def __contains__(self, name: str) -> bool:
        return name in self._stats

    def histogram(self, name: str) -> TensorHistogram:
        s = self._stats[name]
        width = 1.0 / float(s.scale) if s.scale else 0.0
        return TensorHistogram(s.counts.copy(), width, s.min, s.max, s.count, s.nonfinite)

    def histograms(self) -> dict[str, TensorHistogram]:
        return {name: self.histogram(name) for name in self._stats}

    def update(self, name: str, x: np.ndarray) -> None:
        """Add every element of ``x`` to the histogram of ``name``; NaN and ±inf are counted and skipped."""
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name}: cannot histogram an array of {x.dtype}")
        if x.dtype != np.float32:  # float16 too: its min/max/abs have no SIMD loops (8× slower than a cast)
            x = x.astype(np.float32)
        state = self._stats.get(name)
        if state is None:
            state = self._stats[name] = _Running(np.zeros(self.bins, np.int64), np.float32(0))
        flat = x.reshape(-1)
        if flat.size == 0:
            return
        lo, hi = flat.min(), flat.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN propagates through min/max: finite ends ⇒ all finite
            finite = np.isfinite(flat)
            kept = int(np.count_nonzero(finite))
            state.nonfinite += flat.size - kept
            if kept == 0:
                return
            flat = flat[finite]
            lo, hi = flat.min(), flat.max()
        state.min, state.max = min(state.min, float(lo)), max(state.max, float(hi))
        if self.max_samples is not None and flat.size > self.max_samples:
            stride = -(-flat.size // self.max_samples) | 1  # odd: never in step with an even row width
            flat = flat[::stride]
        state.count += flat.size
        amax = np.float32(max(-lo, hi))
        if amax == 0:
            state.counts[0] += flat.size
            return
        self._fit(state, amax)
        scale = state.scale
        for start in range(0, flat.size, _CHUNK):
            part = flat[start : start + _CHUNK]
            magnitude, index = self._abs[: part.size], self._index[: part.size]
            np.abs(part, out=magnitude)
            np.multiply(magnitude, scale, out=index, casting="unsafe")  # float32 product, truncated = floor
            state.counts += np.bincount(index, minlength=self.bins)

    def _fit(self, state: _Running, amax: np.float32) -> None:
        """Make every |x| ≤ ``amax`` land in a bin < bins, growing A by a power of two if needed."""
        # Checks use float32 scalar arithmetic: the same rounding as the per-element pass, and rounding is
        # monotone, so fl(amax·s) < bins bounds every index.
        if state.scale == 0:
            scale = min(np.float32(self.bins / float(amax)), _MAX_SCALE)
            while amax * scale >= self.bins:  # A = amax exactly would put amax at index == bins
                scale = np.nextafter(scale, np.float32(0))
            state.scale = scale
            return
        k, scale = 0, state.scale
        while amax * scale >= self.bins:
            k, scale = k + 1, scale * np.float32(0.5)
        if k == 0:
            return
        merged = np.zeros_like(state.counts)
        if (1 << k) >= self.bins:
            merged[0] = state.counts.sum()
        else:
            np.add.at(merged, np.arange(self.bins) >> k, state.counts)
        state.counts, state.scale = merged, scale


def collect_histograms(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    batches: Iterable[dict[str, np.ndarray]],
    bins: int = DEFAULT_BINS,
    progress: Callable[[int], None] | None = None,
    max_samples: int | None = None,
) -> HistogramCollector:
    """Call ``run(feeds)`` once per batch and histogram every numeric array it returns.

    ``progress`` gets the number of batches done after each one. Arrays of strings or objects are skipped.
    """
    collector = HistogramCollector(bins, max_samples)
    for done, feeds in enumerate(batches, start=1):
        for name, value in run(feeds).items():
            array = np.asarray(value)
            if array.dtype.kind in "biuf":
                collector.update(name, array)
        if progress is not None:
            progress(done)
    return collector


# ---- thresholds on |x| from a histogram (counts, bin width) ----


def percentile_threshold(counts: np.ndarray, width: float, p: float) -> float:
    """The p-th percentile of |x|, linear within the bin that holds it (values spread evenly in a bin)."""
    cumulative = np.cumsum(counts)
    target = cumulative[-1] * p / 100.0
    j = int(np.searchsorted(cumulative, target))  # first bin whose cumulative count reaches the target
    if j >= len(counts):
        return len(counts) * width
    before = cumulative[j - 1] if j else 0
    return (j + (target - before) / counts[j]) * width


def _xlogx(n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, np.float64)
    return n * np.log(np.where(n > 0, n, 1.0))  # 0·log 0 = 0


def entropy_threshold(counts: np.ndarray, width: float, groups: int) -> float:
    """TensorRT's KL-divergence threshold (Migacz, "8-bit Inference with TensorRT", GTC 2017).

    For each candidate i ∈ [groups, bins]: P = bins[:i] with the outliers Σ bins[i:] added to bin i−1;
    Q = bins[:i] merged into ``groups`` groups (bin j in group ⌊j·groups/i⌋), each group's mass spread
    evenly over its bins where P > 0. T = i·width for the i minimising KL(P‖Q), P and Q normalised.

    Vectorised over all candidates at once with prefix sums, since per group everything is a sum:
      KL = (Σ P log P − Σ P log Q)/N − log N + log S,   N = Σ P, S = Σ Q = N − outliers,
      Σ P log Q = Σ_g M_g log(M_g/k_g) + outliers · log(M_last/k_last),
    M_g the group's count and k_g its number of bins with P > 0.
    """
    n = np.asarray(counts, np.float64)
    bins = len(n)
    if bins <= groups:
        return bins * width
    c = np.concatenate(([0.0], np.cumsum(n)))  # c[j] = Σ n[:j]
    z = np.concatenate(([0], np.cumsum(n > 0)))  # nonzero bins before j
    h = np.concatenate(([0.0], np.cumsum(_xlogx(n))))
    total = c[-1]
    i = np.arange(groups, bins + 1)
    outliers = total - c[i]
    last = n[i - 1]
    p_log_p = h[i - 1] + _xlogx(last + outliers)
    g = np.arange(groups + 1)
    edges = (g[None, :] * i[:, None] + groups - 1) // groups  # group g is bins [⌈g·i/G⌉, ⌈(g+1)·i/G⌉)
    mass = c[edges[:, 1:]] - c[edges[:, :-1]]
    support = (z[edges[:, 1:]] - z[edges[:, :-1]]).astype(np.float64)
    support[:, -1] += (last == 0) & (outliers > 0)  # bin i−1 holds P mass (the outliers) even if empty
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.where(mass > 0, np.log(mass / np.maximum(support, 1.0)), -np.inf)
        p_log_q = np.where(mass > 0, mass * log_q, 0.0).sum(axis=1)
        p_log_q += np.where(outliers > 0, outliers * log_q[:, -1], 0.0)  # −inf: P > 0 where Q = 0
        kl = (p_log_p - p_log_q) / total - np.log(total) + np.log(c[i])
    kl = np.where(np.isnan(kl), np.inf, kl)
    return float(i[int(np.argmin(kl))] * width)


def mse_threshold(counts: np.ndarray, width: float, num_levels: int) -> float:
    """T at a bin edge minimising the expected squared error of quantizing |x| to ``num_levels`` steps.

    With bin centres c and counts n: values in [0, T] have rounding error step²/12 (step = T/num_levels,
    uniform rounding error); clipped values have (c − T)². Expanding the square, the clipped part is
    Σ n c² − 2T Σ n c + T² Σ n over bins beyond T: suffix sums give every candidate edge at once.
    """
    n = np.asarray(counts, np.float64)
    bins = len(n)
    centre = np.arange(bins) + 0.5  # in units of width; the argmin does not depend on the unit
    t = np.arange(1, bins + 1, dtype=np.float64)  # candidate T = t·width: bins < t are inside

    def suffix(v: np.ndarray) -> np.ndarray:  # suffix(v)[t] = Σ v[t:], for t = 1..bins
        return np.concatenate((np.cumsum(v[::-1])[::-1], [0.0]))[1:]

    inside = np.cumsum(n)
    error = inside * (t / num_levels) ** 2 / 12 + suffix(n * centre**2) - 2 * t * suffix(n * centre) + t**2 * suffix(n)
    return float(t[int(np.argmin(error))] * width)


# ---- ranges ----


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of: {', '.join(METHODS)}")


def num_levels(hist: TensorHistogram, unsigned: bool = False) -> int:
    """Quantization steps between 0 and T: 255 for uint8 on a tensor ≥ 0, else 127 (int8, or uint8
    with its zero point mid-range on a signed tensor)."""
    return 255 if unsigned and hist.min >= 0 else 127


def threshold(hist: TensorHistogram, method: str, levels: int = 127) -> float:
    """Clipping threshold T on |x| (≤ max |x|) by ``method`` for ``levels`` steps between 0 and T."""
    check_method(method)
    amax = hist.amax
    if amax == 0 or hist.width == 0:
        return 0.0
    if method == "minmax":
        return amax
    if method == "entropy":  # levels + 1 values 0..levels: TensorRT's 128 groups for int8
        # The first bin holds every exact zero (ReLU outputs, padding): a spike that drags KL towards
        # small thresholds that clip the informative tail. Level it with its neighbour, as NVIDIA's
        # pytorch-quantization calibrator does, so the divergence is judged on the nonzero values.
        counts = np.array(hist.counts, dtype=np.float64)
        if len(counts) > 1:
            counts[0] = counts[1]
        t = entropy_threshold(counts, hist.width, levels + 1)
    elif method == "mse":
        t = mse_threshold(hist.counts, hist.width, levels)
    else:
        t = percentile_threshold(hist.counts, hist.width, PERCENTILES.get(method, 99.99))
    return min(float(t), amax)


def compute_range(hist: TensorHistogram, method: str, unsigned: bool = False) -> tuple[float, float]:
    """(lo, hi) = (max(min, −T), min(max, T)) widened so that lo ≤ 0 ≤ hi (zero stays exact).

    A tensor with no nonzero finite value gets (0.0, 0.0): any scale represents it exactly, and the
    consumer must pick one (a zero-width range is not silently turned into an arbitrary one here).
    """
    t = threshold(hist, method, num_levels(hist, unsigned))
    if hist.count == 0 or t == 0:
        return (0.0, 0.0)
    lo, hi = max(hist.min, -t), min(hist.max, t)
    return (float(min(lo, 0.0)), float(max(hi, 0.0)))


def compute_ranges(
    collector: HistogramCollector, method: str, unsigned: bool = False
) -> dict[str, tuple[float, float]]:
    """``compute_range`` for every tensor the collector saw, in first-seen order."""
    check_method(method)
    return {name: compute_range(collector.histogram(name), method, unsigned) for name in collector.tensors()}
