"""Cross-layer equalization (passes/equalize.py): same function, balanced ranges, and what it must not touch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.calib import load_photos
from deploy.calib.data import Preprocess
from deploy.harness.compare import PRESETS, diff_output
from deploy.ort import cpu_session, run_function
from deploy.passes.equalize import equalize
from deploy.passes.qdq import get_target, insert_qdq, plan_qdq, with_outputs

f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731


def _model(nodes, inits, out_shape) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 32, 32])
    graph = helper.make_graph(nodes, "cle", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(f32(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _chain_model(seed: int = 0, spread: float = 1.0) -> onnx.ModelProto:
    """Conv 3→8 → Relu → MaxPool → depthwise Conv 8 → LeakyRelu → grouped Conv (2 groups) 8→8 → PReLU → GAP →
    Flatten → Gemm 8→16 → Relu → Gemm 16→10. ``spread``: the first conv's output channels differ in scale by
    up to this factor, the next layer's weights the other way (what a folded BatchNorm leaves behind)."""
    rng = np.random.default_rng(seed)
    channel = np.geomspace(1 / spread, spread, 8) if spread != 1 else np.ones(8)
    inits = {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)) * channel[:, None, None, None],
             "b1": rng.normal(0, 0.1, 8) * channel,
             "wd": rng.normal(0, 0.3, (8, 1, 3, 3)) / channel[:, None, None, None], "bd": rng.normal(0, 0.1, 8),
             "wg": rng.normal(0, 0.3, (8, 4, 3, 3)), "slope": rng.uniform(0.05, 0.3, (8, 1, 1)),
             "wf1": rng.normal(0, 0.3, (16, 8)), "bf1": rng.normal(0, 0.1, 16),
             "wf2": rng.normal(0, 0.3, (10, 16)), "bf2": np.zeros(10)}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "wd", "bd"], ["cd"], name="depthwise", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["cd"], ["ld"], name="leaky", alpha=0.1),
             helper.make_node("Conv", ["ld", "wg"], ["cg"], name="grouped", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["cg", "slope"], ["pg"], name="prelu"),
             helper.make_node("GlobalAveragePool", ["pg"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf1", "bf1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["rh"], name="relu_fc"),
             helper.make_node("Gemm", ["rh", "wf2", "bf2"], ["y"], name="fc2", transB=1)]
    return _model(nodes, inits, ["n", 10])


def _photos(n: int, offset: int = 0) -> np.ndarray:
    return load_photos(n, Preprocess(size=(32, 32)), offset=offset)


def _output(model, x, name="y"):
    return run_function(cpu_session(model), [name])({"input": x})[name]


def _weight(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_equalization_keeps_the_function_and_balances_each_pair():
    model = _chain_model(spread=30.0)
    x = _photos(8)
    equalized = _copy(model)
    result = equalize(equalized)
    assert result.pairs == [("conv1", "depthwise"), ("depthwise", "grouped"), ("fc1", "fc2")]
    assert set(result.changed_tensors) == {"c1", "r1", "p1", "cd", "ld", "h", "rh"}
    # the grouped conv's output reaches a Gemm through Flatten: the channels do not line up, no pair
    np.testing.assert_allclose(_output(equalized, x), _output(model, x), rtol=1e-4, atol=1e-4)
    assert result.range_ratio_after < 0.5 * result.range_ratio_before
    # after the last sweep, the depthwise → grouped pair has equal ranges channel by channel
    wd, wg = _weight(equalized, "wd"), _weight(equalized, "wg")
    r_out = np.abs(wd).reshape(8, -1).max(axis=1)
    r_in = np.abs(wg).reshape(2, 4, 4, -1).max(axis=(1, 3)).reshape(-1)
    np.testing.assert_allclose(r_out, r_in, rtol=0.01)
    r_fc1, r_fc2 = np.abs(_weight(equalized, "wf1")).max(axis=1), np.abs(_weight(equalized, "wf2")).max(axis=0)
    np.testing.assert_allclose(r_fc1, r_fc2, rtol=1e-6)


def test_equalization_lifts_channels_a_single_activation_scale_would_crush():
    model = _chain_model(seed=1, spread=30.0)
    calib, held = _photos(24), _photos(16, offset=24)

    def int8_sqnr(m):
        plan = plan_qdq(m, get_target("ort-cpu"))
        tensors = [t for t in plan.calibrated if t != "input"]
        outs = run_function(cpu_session(with_outputs(m, tensors)), tensors)({"input": calib})
        ranges = {t: (min(0.0, float(outs[t].min())), max(0.0, float(outs[t].max()))) for t in tensors}
        ranges["input"] = (float(calib.min()), float(calib.max()))
        int8 = insert_qdq(_copy(m), plan, ranges).model
        return diff_output("y", _output(model, held), _output(int8, held), PRESETS["int8"]).centred_sqnr_db

    equalized = _copy(model)
    equalize(equalized)
    before, after = int8_sqnr(model), int8_sqnr(equalized)
    assert after > before + 6.0, (before, after)


def test_clip_and_branches_end_a_chain_and_are_reported():
    rng = np.random.default_rng(2)
    inits = {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)), "w2": rng.normal(0, 0.3, (8, 8, 1, 1)),
             "w3": rng.normal(0, 0.3, (8, 8, 1, 1)), "w4": rng.normal(0, 0.3, (8, 8, 1, 1)),
             "w5": rng.normal(0, 0.3, (8, 8, 1, 1)), "lo": 0.0, "hi": 6.0}
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("HardSigmoid", ["c2"], ["h2"], name="hsig"),
             helper.make_node("Mul", ["c2", "h2"], ["s2"], name="hswish"),  # x · HardSigmoid(x): a branch
             helper.make_node("Conv", ["s2", "w3"], ["c3"], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "w4"], ["c4"], name="conv4"),
             helper.make_node("Conv", ["c4", "w5"], ["y"], name="conv5")]
    model = _model(nodes, inits, ["n", 8, 32, 32])
    result = equalize(_copy(model))
    assert result.pairs == [("conv3", "conv4"), ("conv4", "conv5")]
    assert result.skipped == {"Clip": 1, "HardSigmoid+Mul": 1}
    assert "Clip ×1" in result.summary()
    left_alone = _copy(model)
    assert equalize(left_alone, exclude={"conv4"}).pairs == []  # a layer kept in float is not rescaled
    for name in ("w3", "w4", "w5"):
        np.testing.assert_array_equal(_weight(left_alone, name), _weight(model, name))


def test_quantize_keeps_equalization_when_it_helps_and_writes_the_ranges_it_measured(cli, tmp_path):
    """End to end: the tournament misses the preset, tier 2 equalizes (kept: nearer the preset), the file written
    holds the equalized weights, its ranges table the ranges measured after equalization, and `deploy check`
    passes it against the original fp32 file."""
    import json

    from deploy.calib.table import RangesTable

    source = tmp_path / "chain.onnx"
    onnx.save(_chain_model(seed=1, spread=30.0), str(source))
    out = tmp_path / "chain.int8.onnx"
    result = cli("quantize", source, "-o", out, "--placement", "convs", "--json", tmp_path / "q.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "q.json").read_text())
    step = next(s for s in report["steps"] if s["step"] == "cross-layer equalization")
    assert step["kept"] is True and "3 layer pair(s)" in step["summary"], step
    assert report["steps"][0]["preset_failures"]  # the tournament alone missed it
    # equalization alone meets it (measured 11.0 → 34.1 dB), so GPTQ never runs: no later step hides a stale file
    assert step["centred_sqnr_db"] > report["steps"][0]["centred_sqnr_db"] + 10 and not step["preset_failures"]
    assert [s["step"] for s in report["steps"]] == ["tournament", "cross-layer equalization"]
    table = RangesTable.load(out.with_name("chain.int8.ranges.json"))
    original = run_function(cpu_session(with_outputs(_chain_model(seed=1, spread=30.0), ["r1"])), ["r1"])(
        {"input": _photos(8)})["r1"]
    assert table.ranges["r1"][1] < 0.5 * float(original.max())  # conv1's large channels were scaled down
    check = cli("check", source, out, "--precision", "int8", "--samples", "16")
    assert check.exit_code == 0, check.output
