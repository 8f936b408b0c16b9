"""Histogram observers and range methods: hand-computed thresholds, known distributions, exact growth."""

from statistics import NormalDist

import numpy as np
import pytest

from deploy.calib.observers import (
    METHODS,
    HistogramCollector,
    TensorHistogram,
    collect_histograms,
    compute_range,
    compute_ranges,
    entropy_threshold,
    mse_threshold,
    num_levels,
    percentile_threshold,
    threshold,
)


def hist_of(x: np.ndarray, bins: int = 2048) -> TensorHistogram:
    collector = HistogramCollector(bins)
    collector.update("t", x)
    return collector.histogram("t")


def gaussian_quantiles(n: int) -> np.ndarray:
    """2n values whose |x| are the exact quantiles of |N(0, 1)|: no sampling noise."""
    d = NormalDist()
    q = np.array([d.inv_cdf(0.5 + 0.5 * (k + 0.5) / n) for k in range(n)], np.float32)
    return np.concatenate([q, -q])


def entropy_reference(counts: np.ndarray, groups: int) -> int:
    """The KL method written out per candidate, straight from its definition (slow)."""
    n = np.asarray(counts, np.float64)
    best, best_i = np.inf, None
    for i in range(groups, len(n) + 1):
        p = n[:i].copy()
        p[-1] += n[i:].sum()
        group = np.arange(i) * groups // i
        q = np.zeros(i)
        for g in range(groups):
            members = (group == g) & (p > 0)
            if members.any():
                q[members] = n[:i][group == g].sum() / members.sum()
        if q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        keep = p > 0
        kl = np.inf if (q[keep] == 0).any() else float(np.sum(p[keep] * np.log(p[keep] / q[keep])))
        if kl < best - 1e-12:
            best, best_i = kl, i
    return best_i


# ---- hand-computed thresholds ----


def test_minmax_and_asymmetric_range_by_hand():
    h = hist_of(np.array([-3.0, 1.0, 2.0], np.float32))
    assert (h.min, h.max, h.count, h.amax) == (-3.0, 2.0, 3, 3.0)
    assert compute_range(h, "minmax") == (-3.0, 2.0)


def test_percentile_by_hand():
    counts = np.array([50, 30, 20, 0])
    # 90% of 100 values: 80 lie in bins 0–1, the 10 more are half of bin 2's 20 → T = 2.5 bin widths
    assert percentile_threshold(counts, 1.0, 90) == pytest.approx(2.5)
    assert percentile_threshold(counts, 0.5, 50) == pytest.approx(0.5)
    assert percentile_threshold(counts, 1.0, 100) == pytest.approx(3.0)


@pytest.mark.parametrize("levels, expected", [(1, 1.0), (10, 3.0), (100, 4.0)])
def test_mse_by_hand(levels, expected):
    # 100 values in bin 0 (centre 0.5), one in bin 3 (centre 3.5); error(T) = inside·(T/L)²/12 + (3.5 − T)²
    # L = 10: T=1: 0.083+6.25, T=2: 0.333+2.25, T=3: 0.75+0.25 (best), T=4: 101·0.16/12 = 1.35
    counts = np.array([100, 0, 0, 1])
    assert mse_threshold(counts, 1.0, levels) == expected
    assert mse_threshold(counts, 0.25, levels) == expected * 0.25


def test_entropy_matches_the_definition_on_random_histograms():
    rng = np.random.default_rng(1)
    for _ in range(25):
        bins, groups = int(rng.integers(20, 80)), int(rng.integers(4, 12))
        counts = rng.poisson(rng.uniform(0, 30, bins) * (rng.random(bins) > 0.3))  # with empty bins
        counts[-1] += 1
        assert entropy_threshold(counts, 0.5, groups) == entropy_reference(counts, groups) * 0.5


def test_entropy_keeps_everything_when_there_is_nothing_to_clip():
    counts = np.full(300, 10)  # uniform: clipping only loses, Q = P at i = bins
    assert entropy_threshold(counts, 1.0, 128) == 300.0


# ---- known distributions ----


def test_uniform_percentile_is_near_max():
    x = np.random.default_rng(0).uniform(-1, 1, 1_000_000).astype(np.float32)
    h = hist_of(x)
    lo, hi = compute_range(h, "percentile")
    assert hi == pytest.approx(0.9999, abs=2 * h.width) and lo == pytest.approx(-0.9999, abs=2 * h.width)
    assert compute_range(h, "minmax") == (float(x.min()), float(x.max()))


def test_gaussian_percentile_999_is_3_29_within_a_bin():
    h = hist_of(gaussian_quantiles(1_000_000))
    t = compute_range(h, "percentile-99.9")[1]
    assert abs(t - NormalDist().inv_cdf(0.9995)) < h.width  # 3.2905
    assert compute_range(h, "percentile-99.99")[1] == pytest.approx(NormalDist().inv_cdf(0.99995), abs=2 * h.width)


def test_gaussian_with_outliers_entropy_and_mse_clip_well_below_max():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1_000_000), [40.0, -50.0, 45.0]]).astype(np.float32)
    h = hist_of(x)
    assert compute_range(h, "minmax") == (-50.0, 45.0)
    for method in ("entropy", "percentile-99.999"):
        lo, hi = compute_range(h, method)
        assert 2.5 < hi < 8.0 and lo == -hi, (method, lo, hi)
    # MSE weighs each outlier o by (o − T)², against 1e6·(T/127)²/12 for the body: the derivative is zero at
    # T = Σo / (3 + 1e6/(12·127²)) ≈ 16.53 — far below the max, though well above the body's ≈ 5σ.
    lo, hi = compute_range(h, "mse")
    assert hi == pytest.approx(135.0 / (3 + 1e6 / (12 * 127**2)), abs=h.width) and lo == -hi


def test_entropy_on_gaussian_is_between_2_and_6_sigma():
    x = (3.0 * np.random.default_rng(2).standard_normal(1_000_000)).astype(np.float32)
    t = threshold(hist_of(x), "entropy")
    assert 2 * 3.0 < t < 6 * 3.0


def test_mse_on_gaussian_clips_near_the_known_optimum():
    # For int8 (127 steps) the MSE-optimal clip of N(0,1) is ≈ 4σ (the step²/12 term vs the tail's error)
    x = gaussian_quantiles(500_000)
    assert 3.5 < threshold(hist_of(x), "mse") < 4.5


def test_nonnegative_tensor_gives_lo_zero_and_unsigned_levels():
    x = np.maximum(np.random.default_rng(0).standard_normal(200_000), 0).astype(np.float32)
    h = hist_of(x)
    assert num_levels(h, unsigned=True) == 255 and num_levels(h, unsigned=False) == 127
    for method in METHODS:
        for unsigned in (False, True):
            lo, hi = compute_range(h, method, unsigned)
            assert lo == 0.0 and 0 < hi <= float(x.max())
    signed = hist_of(np.array([-1.0, 2.0], np.float32))
    assert num_levels(signed, unsigned=True) == 127


def test_range_always_holds_zero():
    h = hist_of(np.array([2.0, 3.0, 5.0], np.float32))  # strictly positive
    assert compute_range(h, "minmax") == (0.0, 5.0)
    h = hist_of(np.array([-4.0, -1.0], np.float32))
    assert compute_range(h, "minmax") == (-4.0, 0.0)


# ---- collection: growth, zeros, non-finite values, dtypes ----


def test_growth_by_powers_of_two_equals_one_batch():
    rng = np.random.default_rng(3)
    batches = [rng.uniform(-m, m, 50_000).astype(np.float32) for m in (1.0, 2.0, 4.0)]
    for b, m in zip(batches, (1.0, 2.0, 4.0)):
        b[0] = m  # exact maxima: A doubles exactly, and each maximum sits on a bin boundary
    grown = HistogramCollector()
    for b in batches:
        grown.update("t", b)
    a, b = grown.histogram("t"), hist_of(np.concatenate(batches))
    assert a.width == b.width and np.array_equal(a.counts, b.counts)
    assert (a.min, a.max, a.count) == (b.min, b.max, b.count) == (float(b.min), 4.0, 150_000)


def test_growth_by_any_factor_keeps_every_count_in_its_bin():
    rng = np.random.default_rng(4)
    batches = [(s * rng.standard_normal(30_000)).astype(np.float32) for s in (1.0, 3.7, 0.5, 20.0, 150.0)]
    collector = HistogramCollector(512)
    for b in batches:
        collector.update("t", b)
    h = collector.histogram("t")
    everything = np.concatenate(batches)
    # a fresh histogram with the final bin width, computed the same way (float32 product, floored)
    index = np.floor(np.abs(everything) * np.float32(1 / h.width)).astype(np.int64)
    assert np.array_equal(h.counts, np.bincount(index, minlength=512))
    assert h.count == h.counts.sum() == everything.size
    assert (h.min, h.max) == (float(everything.min()), float(everything.max()))
    assert h.amax <= h.edge < 2 * h.amax


def test_all_zero_tensor_gives_zero_range_then_grows():
    collector = HistogramCollector()
    collector.update("z", np.zeros((4, 8), np.float32))
    h = collector.histogram("z")
    assert (h.width, h.count, int(h.counts[0])) == (0.0, 32, 32)
    for method in METHODS:
        assert compute_range(h, method) == (0.0, 0.0)  # documented: zero width, the consumer picks a scale
    collector.update("z", np.array([0.0, 1.0, -0.5], np.float32))
    h = collector.histogram("z")
    assert int(h.counts[0]) == 33 and h.count == 35 and compute_range(h, "minmax") == (-0.5, 1.0)


def test_nan_and_inf_are_counted_and_ignored():
    collector = HistogramCollector()
    collector.update("t", np.array([np.nan, np.inf, -np.inf, 1.0, -2.0], np.float32))
    collector.update("t", np.full(3, np.nan, np.float32))
    h = collector.histogram("t")
    assert (h.count, h.nonfinite, h.min, h.max, int(h.counts.sum())) == (2, 6, -2.0, 1.0, 2)
    assert compute_range(h, "minmax") == (-2.0, 1.0)
    collector.update("nan", np.array([np.nan]))
    assert compute_range(collector.histogram("nan"), "entropy") == (0.0, 0.0)


def test_other_dtypes_and_empty_arrays():
    collector = HistogramCollector()
    collector.update("f64", np.array([0.25, -1.5]))
    collector.update("f16", np.array([3.0, -0.5], np.float16))
    collector.update("int", np.array([[1, 7], [-2, 0]], np.int64))
    collector.update("empty", np.zeros((0, 3), np.float32))
    assert collector.tensors() == ["f64", "f16", "int", "empty"]
    ranges = compute_ranges(collector, "minmax")
    assert ranges == {"f64": (-1.5, 0.25), "f16": (-0.5, 3.0), "int": (-2.0, 7.0), "empty": (0.0, 0.0)}
    assert all(type(v) is float for pair in ranges.values() for v in pair)
    with pytest.raises(TypeError):
        collector.update("s", np.array(["a"]))


def test_chunked_update_of_a_large_tensor_matches_bincount():
    x = np.random.default_rng(5).standard_normal(300_000).astype(np.float32)  # > one internal chunk
    h = hist_of(x, 1024)
    index = np.floor(np.abs(x) * np.float32(1 / h.width)).astype(np.int64)
    assert np.array_equal(h.counts, np.bincount(index, minlength=1024))
    assert h.counts[-1] >= 1  # the first batch's max|x| lands in the last bin: A hugs the data


def test_unknown_method_lists_choices():
    h = hist_of(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="choose one of: minmax, percentile, percentile-99.9, .*mse"):
        compute_range(h, "kl")
    with pytest.raises(ValueError, match="percentile-99.999"):
        compute_ranges(HistogramCollector(), "max")
    percentiles = ("percentile", "percentile-99.9", "percentile-99.99", "percentile-99.999")
    assert set(METHODS) == {"minmax", *percentiles, "entropy", "mse"}


def test_collect_histograms_runs_once_per_batch():
    calls, seen = [], []

    def run(feeds):
        calls.append(feeds["x"])
        x = feeds["x"]
        return {"relu": np.maximum(x, 0), "neg": -x, "shape": np.array(x.shape), "label": np.array(["s"])}

    batches = [{"x": np.full((2, 3), v, np.float32)} for v in (1.0, -2.0, 3.0)]
    collector = collect_histograms(run, iter(batches), bins=64, progress=seen.append)
    assert len(calls) == 3 and seen == [1, 2, 3]
    assert collector.tensors() == ["relu", "neg", "shape"]  # strings skipped
    assert collector.histogram("relu").count == 18
    ranges = compute_ranges(collector, "minmax", unsigned=True)
    assert ranges["relu"] == (0.0, 3.0) and ranges["neg"] == (-3.0, 2.0) and ranges["shape"] == (0.0, 3.0)


def test_subsampled_histogram_keeps_exact_extremes_and_close_percentiles():
    from deploy.calib.observers import HistogramCollector, compute_range

    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 16, 64, 64)).astype(np.float32)
    x[1, 3, 5, 7] = 40.0  # a lone outlier the subsample will almost surely miss
    full, sampled = HistogramCollector(), HistogramCollector(max_samples=20_000)
    full.update("t", x)
    sampled.update("t", x)
    h_full, h_sampled = full.histogram("t"), sampled.histogram("t")
    assert h_sampled.max == h_full.max == 40.0 and h_sampled.min == h_full.min
    assert h_sampled.count < 25_000 < h_full.count == x.size
    assert compute_range(h_sampled, "minmax") == compute_range(h_full, "minmax")
    _, hi_full = compute_range(h_full, "percentile-99.9")
    _, hi_sampled = compute_range(h_sampled, "percentile-99.9")
    assert hi_sampled == pytest.approx(hi_full, rel=0.05)
