"""Latency statistics on synthetic timings whose answers are known."""

import itertools

import numpy as np
import pytest

from deploy.errors import BadInputError
from deploy.harness.bench import Warmup, parse_batches
from deploy.harness.stats import balanced_orders, is_stable, paired_ratio, summarize


def test_summary_of_one_to_a_hundred():
    s = summarize([float(i) for i in range(1, 101)])
    assert s.n == 100 and s.min == 1 and s.max == 100
    assert s.median == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)  # linear interpolation: 1 + 0.9 · 99
    assert s.p99 == pytest.approx(99.01)
    assert s.mean == pytest.approx(50.5)
    assert s.std == pytest.approx(29.011491975882016)  # sample standard deviation


def test_exact_ratio_has_a_zero_width_interval():
    reference = np.linspace(0.010, 0.020, 40)
    est = paired_ratio(2.0 * reference, reference)
    assert est.ratio == pytest.approx(2.0) and est.low == pytest.approx(2.0) and est.high == pytest.approx(2.0)


def test_paired_ratio_cancels_drift_that_fools_unpaired_medians():
    """The machine halves its speed for the second half of the run while B is measured more there: the
    paired ratio still finds the true 1.25, the ratio of medians does not."""
    rng = np.random.default_rng(0)
    n = 200
    drift = np.where(np.arange(n) < n // 2, 1.0, 2.0)
    a = 0.010 * drift * rng.lognormal(0, 0.02, n)
    b = 0.0125 * drift * rng.lognormal(0, 0.02, n)
    est = paired_ratio(b, a)
    assert est.low <= 1.25 <= est.high and est.high - est.low < 0.02
    unpaired = np.median(b[n // 4:]) / np.median(a[: 3 * n // 4])  # B sampled mostly in the slow half
    assert abs(unpaired - 1.25) > 0.2


def test_interval_covers_truth_and_narrows_with_rounds():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 80, 320):
        a = 0.01 * rng.lognormal(0, 0.1, n)
        b = 0.015 * rng.lognormal(0, 0.1, n)
        est = paired_ratio(b, a, seed=3)
        assert est.low <= 1.5 <= est.high
        widths.append(est.high - est.low)
    assert widths[0] > widths[1] > widths[2]


def test_paired_ratio_rejects_unpaired_lengths():
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


def test_stability():
    assert is_stable([1.0] * 10, window=5)
    assert not is_stable([1.0] * 5 + [2.0] * 5, window=5)
    assert not is_stable([1.0] * 9, window=5)  # too few runs to say


@pytest.mark.parametrize("k", range(1, 7))
def test_balanced_orders_are_carryover_balanced(k):
    rows = balanced_orders(k)
    for row in rows:
        assert sorted(row) == list(range(k))
    follows = {pair: 0 for pair in itertools.permutations(range(k), 2)}
    for row in rows:
        for before, after in zip(row, row[1:]):
            follows[(before, after)] += 1
    assert len(set(follows.values())) <= 1  # every entry follows every other equally often


def test_option_parsing():
    assert Warmup.parse("auto") == Warmup()
    assert Warmup.parse("20") == Warmup(runs=20)
    assert Warmup.parse("1.5s") == Warmup(seconds=1.5)
    assert parse_batches("1,8,8") == (1, 8)
    for bad in ("x", "-3", "2m"):
        with pytest.raises(BadInputError):
            Warmup.parse(bad)
    for bad in ("", "1,x", "0", "1,-8"):
        with pytest.raises(BadInputError):
            parse_batches(bad)
