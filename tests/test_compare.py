"""Metrics and tolerances on synthetic arrays whose answers are known by hand."""

import math

import numpy as np
import pytest

from deploy.errors import BadInputError
from deploy.harness.compare import PRESETS, Tolerance, compare_outputs, diff_output, parse_tolerance_overrides


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


def test_cosine_is_a_low_percentile_of_samples_and_top1():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0]])  # second sample orthogonal
    d = diff_output("y", a, b, Tolerance(min_cosine=0.9))
    assert d.cosine_min == pytest.approx(0.0) and d.cosine == pytest.approx(0.05)  # 5th percentile of [0, 1]
    assert d.cosine_median == pytest.approx(0.5)
    assert d.top1 == pytest.approx(0.5)
    assert any("cosine" in f for f in d.failures)


OLD_PRESETS = {"fp16": Tolerance(max_rel=1e-2, min_cosine=0.9999), "int8": Tolerance(min_cosine=0.99)}


def _old_min_cosine(a, b):
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return min(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) for x, y in zip(a2, b2))


def test_a_near_empty_sample_does_not_set_the_cosine():
    """An exact change, one sample whose output is ~0 (max 1e-7) plus float noise: the old minimum said 0.69."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 64))
    a[3] = 1e-7 * rng.standard_normal(64)
    b = a + 1e-7 * rng.standard_normal(a.shape)  # float noise that swamps only the near-empty sample
    assert _old_min_cosine(a, b) < 0.9  # the old metric fails it
    d = diff_output("y", a, b, PRESETS["int8"])
    assert d.passed and d.cosine > 0.999999 and d.near_zero == 1


def test_a_dead_score_channel_cannot_hide_behind_box_coordinates():
    """A YOLO-style head (N, 4 boxes + 3 class scores, anchors): int8 that zeroes the scores."""
    rng = np.random.default_rng(4)
    boxes = rng.uniform(0, 640, (2, 4, 400))
    scores = 1 / (1 + np.exp(-rng.normal(-4, 2, (2, 3, 400))))
    a = np.concatenate([boxes, scores], axis=1)
    b = a.copy()
    b[:, 4:] = 0.0  # every detection lost
    assert diff_output("y", a, b, OLD_PRESETS["int8"]).passed  # the old preset passed it (cosine ≈ 1)
    d = diff_output("y", a, b, PRESETS["int8"])
    assert not d.passed and d.worst_channel in (4, 5, 6) and d.channel_sqnr_db == pytest.approx(0.0, abs=1e-9)
    fine = a.copy()
    fine[:, 4:] += rng.normal(0, 0.002, (2, 3, 400))  # int8-sized noise on the scores: kept
    assert diff_output("y", a, fine, PRESETS["int8"]).passed
    transposed = diff_output("y", a.transpose(0, 2, 1), b.transpose(0, 2, 1), PRESETS["int8"])
    assert not transposed.passed and transposed.worst_channel in (4, 5, 6)  # (N, anchors, 4 + classes)


def test_fp16_of_a_saturating_sigmoid_map_is_judged_by_energy():
    rng = np.random.default_rng(5)
    a = 1 / (1 + np.exp(-rng.normal(0, 6, (2, 1, 64, 64))))
    b = a.copy()
    flat = b.reshape(-1)
    flat[rng.choice(flat.size, 20, replace=False)] += 0.02  # a few saturated pixels off by 2e-2
    assert not diff_output("y", a, b, OLD_PRESETS["fp16"]).passed  # max rel 0.02 > 1e-2
    d = diff_output("y", a, b, PRESETS["fp16"])
    assert d.passed and d.sqnr_db > 40


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


def _yolo_head(rng, classes: int = 5, anchors: int = 400) -> np.ndarray:
    """(2, 4 + classes, anchors): boxes in pixels, then sigmoid scores; class 4+classes−1 is absent (~1e-4)."""
    boxes = rng.uniform(0, 640, (2, 4, anchors))
    scores = 1 / (1 + np.exp(-rng.normal(-4, 2, (2, classes, anchors))))
    scores[:, -1] = 1 / (1 + np.exp(-rng.normal(-9, 0.5, (2, anchors))))  # a class absent from the images
    return np.concatenate([boxes, scores], axis=1)


def test_a_class_absent_from_the_data_is_judged_in_steps_not_decibels():
    rng = np.random.default_rng(6)
    a = _yolo_head(rng)
    assert a[:, -1].max() < 2 / 255
    b = a.copy()
    b[:, 4:] = np.clip(np.round(a[:, 4:] * 255 + rng.uniform(-0.6, 0.6, a[:, 4:].shape)) / 255, 0, 1)  # uint8 scores
    d = diff_output("y", a, b, PRESETS["int8"])
    assert d.passed and d.silent_channels == 1, d.failures  # one uint8 step of noise on ~0 is not a dead class
    assert diff_output("y", a, b, Tolerance(min_channel_sqnr_db=3.0)).silent_channels == 1
    false_alarm = b.copy()
    false_alarm[0, -1, 7] = 0.5  # int8 invents a score of 0.5 on the absent class: not silence any more
    d = diff_output("y", a, false_alarm, PRESETS["int8"])
    assert not d.passed and d.worst_channel == a.shape[1] - 1 and d.silent_channels == 0
    dead = b.copy()
    dead[:, 4:-1] = 0.0  # the live classes killed: they fail whatever the absent one does
    d = diff_output("y", a, dead, PRESETS["int8"])
    assert not d.passed and 4 <= d.worst_channel < a.shape[1] - 1


def test_a_softmax_output_is_judged_by_the_probability_mass_moved():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 0.3, (64, 4))  # a 4-way orientation classifier, nearly uniform
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noisy = logits + rng.normal(0, 0.05, logits.shape)
    q = np.exp(noisy) / np.exp(noisy).sum(1, keepdims=True)
    d = diff_output("p", p, q, PRESETS["int8"])
    assert d.distribution_axis == 1 and d.tv_p95 < 0.05 and d.passed, d.failures
    swapped = q[:, ::-1].copy()  # every decision changed: a lot of mass moves
    d = diff_output("p", p, swapped, PRESETS["int8"])
    assert not d.passed and "total variation" in d.failures[0]
    seq_logits = rng.normal(0, 4, (3, 40, 30))  # a CTC recognizer's (N, steps, classes) softmax
    seq = np.exp(seq_logits) / np.exp(seq_logits).sum(2, keepdims=True)
    d = diff_output("p", seq, seq, PRESETS["int8"])
    assert d.distribution_axis == 2 and d.tv_p95 == 0.0 and d.top1_positions == 1.0 and d.passed
    assert diff_output("y", np.abs(logits), np.abs(noisy), PRESETS["int8"]).distribution_axis is None


def test_one_json_policy_for_non_finite_numbers(tmp_path):
    """An exact match has SQNR ∞: every report writes null for it (JSON has no infinity) and says exact."""
    import json
    import math

    import numpy as np

    from deploy.artifacts.files import jsonable, write_json
    from deploy.harness.compare import PRESETS, diff_output

    a = np.arange(12, dtype=np.float32).reshape(2, 6)
    diff = diff_output("logits", a, a.copy(), PRESETS["fp32"])
    data = diff.to_dict()
    assert data["sqnr_db"] is None and data["exact"] is True
    assert jsonable({"x": math.inf, "y": [math.nan, np.float32(1.5)], "z": (1, 2)}) == {"x": None, "y": [None, 1.5],
                                                                                         "z": [1, 2]}
    path = write_json(tmp_path / "r.json", {"diff": data, "ratio": -math.inf})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text and '"inf"' not in text
    assert json.loads(text)["ratio"] is None
