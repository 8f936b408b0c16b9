"""The ranges table: JSON round trip with plain floats, atomic writes, clear errors, TensorRT cache hex."""

import json

import numpy as np
import pytest

from deploy.calib.table import RangesTable, fingerprint_arrays, read_trt_cache, trt_scale, write_trt_cache


def table(**overrides) -> RangesTable:
    fields = dict(
        ranges={"input": (-2.1179, 2.64), "relu_1": (0.0, 6.5)},
        method="entropy",
        target="trt-int8",
        fingerprint="0123456789abcdef",
        samples=128,
        source="photos: 128 crops",
        scores={"entropy": {"sqnr_db": 31.5}, "minmax": {"sqnr_db": 24.0}},
    )
    return RangesTable(**(fields | overrides))


def test_json_round_trip(tmp_path):
    path = tmp_path / "ranges.json"
    t = table()
    t.save(path)
    assert RangesTable.load(path) == t
    assert [p.name for p in tmp_path.iterdir()] == ["ranges.json"]  # no temporary file left behind
    t2 = table(scores=None, ranges={})
    t2.save(path)  # overwrites
    assert RangesTable.load(path) == t2


def test_numpy_values_are_written_as_plain_floats(tmp_path):
    path = tmp_path / "ranges.json"
    lo, hi = np.float32(-0.1), np.float32(3.75)
    scores = {"sqnr": np.float32(20.5), "per_tensor": np.array([1.0, 2.0]), "n": np.int64(3), "same": np.inf}
    table(ranges={"x": (lo, hi)}, samples=np.int64(16), scores=scores).save(path)
    raw = json.loads(path.read_text())
    assert raw["ranges"]["x"] == [float(lo), 3.75] and raw["samples"] == 16
    assert raw["scores"] == {"sqnr": 20.5, "per_tensor": [1.0, 2.0], "n": 3, "same": None}
    loaded = RangesTable.load(path)
    assert loaded.ranges["x"] == (float(lo), 3.75) and type(loaded.ranges["x"][0]) is float


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "invalid JSON at line 1"),
        ('{"a": 1}', "not a ranges table"),
        ("[1, 2]", "not a ranges table"),
        ("VERSION", "version 99"),
        ("RANGES", "range of 'x' must be finite"),
        ("SAMPLES", "field 'samples' must be an integer"),
    ],
)
def test_invalid_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    good = table().to_dict()
    edits = {
        "VERSION": good | {"version": 99},
        "RANGES": good | {"ranges": {"x": [3.0, 1.0]}},
        "SAMPLES": good | {"samples": "many"},
    }
    path.write_text(json.dumps(edits[content]) if content in edits else content)
    with pytest.raises(ValueError, match=message) as error:
        RangesTable.load(path)
    text = str(error.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read ranges table"):
        RangesTable.load(tmp_path / "nowhere.json")


def test_fingerprint_depends_on_bytes_shape_and_dtype():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    f = fingerprint_arrays(a)
    assert len(f) == 16 and int(f, 16) >= 0
    assert fingerprint_arrays(a.copy()) == f
    assert fingerprint_arrays(np.asfortranarray(a)) == f  # same values, different memory order
    assert fingerprint_arrays(a.reshape(4, 3)) != f
    assert fingerprint_arrays(a.astype(np.float64)) != f
    b = a.copy()
    b[2, 3] = 11.5
    assert fingerprint_arrays(b) != f
    assert fingerprint_arrays(a, np.arange(3)) != f != fingerprint_arrays(a, np.arange(4))


def test_trt_cache_hex_for_known_scales(tmp_path):
    path = tmp_path / "calib.cache"
    t = table(ranges={"in": (-127.0, 100.0), "relu": (0.0, 0.254), "half": (-63.5, 0.0)})
    write_trt_cache(t, path)
    lines = path.read_text().splitlines()
    # scale 1.0 = 0x3f800000; 0.254/127 = 0.002 = 0x3b03126f; 63.5/127 = 0.5 = 0x3f000000
    assert lines == ["TRT-8601-EntropyCalibration2", "in: 3f800000", "relu: 3b03126f", "half: 3f000000"]
    scales = read_trt_cache(path)
    assert scales == {"in": 1.0, "relu": trt_scale(0.0, 0.254), "half": 0.5}
    assert scales["relu"] == pytest.approx(0.002, rel=1e-7)


def test_trt_cache_round_trip_with_custom_header(tmp_path):
    path = tmp_path / "calib.cache"
    rng = np.random.default_rng(0)
    ranges = {f"/layer{i}/Conv_output_0": (float(-a), float(b)) for i, (a, b) in enumerate(rng.uniform(0, 9, (20, 2)))}
    write_trt_cache(table(ranges=ranges), path, header="TRT-100300-EntropyCalibration2")
    assert path.read_text().startswith("TRT-100300-EntropyCalibration2\n")
    scales = read_trt_cache(path)
    assert list(scales) == list(ranges)
    for name, (lo, hi) in ranges.items():
        assert scales[name] == float(np.float32(max(-lo, hi) / 127))
    path.write_text("TRT-8601-EntropyCalibration2\nx: zz\n")
    with pytest.raises(ValueError, match=r"calib.cache:2: expected 'name: <8 hex digits>'"):
        read_trt_cache(path)
