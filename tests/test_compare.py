"""Metrics and tolerances on synthetic arrays whose answers are known by hand."""

import math

import numpy as np
import pytest

from deploy.compare import PRESETS, Tolerance, compare_outputs, diff_output, parse_tolerance_overrides
from deploy.errors import BadInputError


def test_max_abs_and_relative_error():
    a = np.array([[1.0, -4.0, 2.0]], np.float32)
    b = np.array([[1.0, -4.5, 2.0]], np.float32)
    d = diff_output("y", a, b, PRESETS["fp32"])
    assert d.max_abs == pytest.approx(0.5)
    assert d.max_rel == pytest.approx(0.5 / 4.0)
    assert not d.passed and "max_rel" in d.failures[0]


def test_sqnr_and_centred_sqnr():
    a = np.ones((2, 100), np.float32)
    b = a + 0.1  # error energy 0.01 per element against signal 1: 20 dB
    d = diff_output("y", a, b, Tolerance())
    assert d.sqnr_db == pytest.approx(20.0, abs=1e-4)
    # a constant offset is invisible after centring: no centred error at all
    assert d.centred_sqnr_db == math.inf
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 1000)) + 50.0  # flat logits: a large common offset
    noise = rng.standard_normal((4, 1000)) * 0.1
    d = diff_output("y", a, a + noise, Tolerance())
    assert d.sqnr_db > 50  # plain SQNR is flattered by the offset …
    assert d.centred_sqnr_db == pytest.approx(20.0, abs=0.5)  # … centred SQNR is not


def test_cosine_is_the_worst_sample_and_top1():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0]])  # second sample orthogonal
    d = diff_output("y", a, b, Tolerance(min_cosine=0.9))
    assert d.cosine == pytest.approx(0.0)
    assert d.top1 == pytest.approx(0.5)
    assert any("cosine" in f for f in d.failures)


def test_identical_outputs_pass_every_preset():
    a = np.random.default_rng(1).standard_normal((8, 10)).astype(np.float32)
    for name, tol in PRESETS.items():
        d = diff_output("y", a, a.copy(), tol)
        assert d.passed, name
        assert d.max_rel == 0 and d.sqnr_db == math.inf and d.cosine == pytest.approx(1.0)


def test_nan_and_shape_mismatch_fail():
    a = np.zeros((2, 3))
    assert not diff_output("y", a, np.full((2, 3), np.nan), Tolerance()).passed
    assert "shape" in diff_output("y", a, np.zeros((3, 2)), Tolerance()).failures[0]


def test_fp16_preset_thresholds():
    a = np.random.default_rng(2).standard_normal((4, 1000))
    small = a + 1e-3 * np.abs(a).max()  # max rel 1e-3: within fp16's 1e-2 …
    assert diff_output("y", a, small, PRESETS["fp16"]).passed
    assert not diff_output("y", a, small, PRESETS["fp32"]).passed  # … but not fp32's 1e-5


def test_tolerance_overrides():
    common, per = parse_tolerance_overrides(["max_rel=1e-3", "logits:min_cosine=0.5"])
    assert common == {"max_rel": 1e-3} and per == {"logits": {"min_cosine": 0.5}}
    for bad in ["max_rel", "speed=3", "max_rel=abc"]:
        with pytest.raises(BadInputError):
            parse_tolerance_overrides([bad])
    a = [{"logits": np.ones((2, 3)), "aux": np.ones((2, 3))}]
    b = [{"logits": np.ones((2, 3)) * 1.0005, "aux": np.ones((2, 3)) * 1.0005}]
    diffs, _ = compare_outputs(a, b, "fp32", ["logits:max_rel=1e-3"])
    verdict = {d.name: d.passed for d in diffs}
    assert verdict == {"logits": True, "aux": False}
    with pytest.raises(BadInputError):
        compare_outputs(a, b, "fp32", ["nosuch:max_rel=1"])
