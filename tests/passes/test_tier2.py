"""Second-tier PTQ passes on real photos: GPTQ weight rounding and empirical bias correction."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.calib import load_photos
from deploy.calib.data import Preprocess
from deploy.ort import cpu_session, run_function
from deploy.passes.bias_correction import fold_corrections, measure_corrections
from deploy.passes.gptq import gptq_weights, input_tensors
from deploy.passes.qdq import get_target, insert_qdq, plan_qdq, quantize_weight, with_outputs


def _repvgg_like(seed: int = 0) -> onnx.ModelProto:
    """Conv 3→16 (3×3) → Relu → Conv 16→16 (3×3) → Relu → GlobalAveragePool → Flatten → Gemm 16→10. Kernels
    shaped like a fused RepVGG block: a centre tap larger than the rest, the textbook case for per-channel
    round-to-nearest."""
    rng = np.random.default_rng(seed)

    def kernel(out, inp):
        w = rng.normal(0, 0.05, (out, inp, 3, 3))
        w[:, :, 1, 1] += rng.normal(0, 1.0, (out, inp))
        return w.astype(np.float32)

    inits = [numpy_helper.from_array(kernel(16, 3), "w1"), numpy_helper.from_array(np.zeros(16, np.float32), "b1"),
             numpy_helper.from_array(kernel(16, 16) / 4, "w2"),
             numpy_helper.from_array(rng.normal(0, 0.3, (10, 16)).astype(np.float32), "w3"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b3")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),  # no bias
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "repvgg_like",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _photos(n: int, offset: int = 0) -> np.ndarray:
    return load_photos(n, Preprocess(size=(32, 32)), offset=offset)


def _output(model: onnx.ModelProto, x: np.ndarray, name: str = "logits") -> np.ndarray:
    return run_function(cpu_session(model), [name])({"input": x})[name]


def _int8(model, ranges, weights=None):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return insert_qdq(copy, plan_qdq(copy, get_target("ort-cpu")), ranges, weights).model


def _ranges(model, x):
    plan = plan_qdq(model, get_target("ort-cpu"))
    tensors = [t for t in plan.calibrated if t != "input"]
    outs = run_function(cpu_session(with_outputs(model, tensors)), tensors)({"input": x})
    ranges = {t: (float(outs[t].min()), float(outs[t].max())) for t in tensors}
    ranges["input"] = (float(x.min()), float(x.max()))
    return ranges


def test_gptq_rounding_lowers_the_output_error_of_fused_kernels_on_held_out_photos():
    model = _repvgg_like()
    calib, held = _photos(24), _photos(16, offset=24)
    layers = ["conv1", "conv2", "fc"]
    session = cpu_session(with_outputs(model, input_tensors(model, layers)))
    result = gptq_weights(model, layers, [{"input": calib[i:i + 8]} for i in range(0, 24, 8)],
                          lambda feed, outs: run_function(session, outs)(feed))
    assert set(result.error_ratio) == set(layers) and all(r < 0.9 for r in result.error_ratio.values())
    for (name, axis), (levels, scales) in result.weights.items():
        weight = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
        rtn_levels, rtn_scales = quantize_weight(weight, axis)
        np.testing.assert_allclose(scales, rtn_scales, rtol=1e-6)  # the grid is unchanged: only the rounding
        assert levels.dtype == np.int8 and np.abs(levels.astype(int)).max() <= 127
        assert 0 < np.mean(levels != rtn_levels) < 0.5
    ranges = _ranges(model, calib)
    reference = _output(model, held)
    rtn_error = np.mean((_output(_int8(model, ranges), held) - reference) ** 2)
    gptq_error = np.mean((_output(_int8(model, ranges, dict(result.weights)), held) - reference) ** 2)
    assert gptq_error < 0.7 * rtn_error, (gptq_error, rtn_error)


def test_bias_correction_removes_the_mean_shift_of_a_clipped_range():
    model = _repvgg_like(1)
    calib = _photos(24)
    ranges = _ranges(model, calib)
    lo, hi = ranges["r1"]
    ranges["r1"] = (lo, hi * 0.4)  # a clipped range: int8 loses the top of relu1's output, a biased error
    int8 = _int8(model, ranges)

    def load(m):
        session = cpu_session(m)
        return lambda feed, outs: run_function(session, outs)(feed)

    feeds = [{"input": calib[i:i + 8]} for i in range(0, 24, 8)]
    found = measure_corrections(model, int8, ["conv1", "conv2", "fc"], feeds, load, waves=3)
    assert found.shift_before["conv2"] > 0.01 and set(found.corrections) >= {"conv2"}
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    assert fold_corrections(corrected, found.corrections) == []
    conv2 = next(n for n in corrected.graph.node if n.name == "conv2")
    assert len(conv2.input) == 3 and conv2.input[2]  # a bias created where the Conv had none
    fp32_c2 = _output(with_outputs(model, ["c2"]), calib, "c2")

    def shift(m):  # mean |per-channel mean shift| of conv2's raw output against fp32
        return np.abs((_output(with_outputs(m, ["c2"]), calib, "c2") - fp32_c2).mean(axis=(0, 2, 3))).mean()

    before, after = shift(int8), shift(_int8(corrected, ranges))
    assert after < 0.5 * before, (before, after)


def test_a_tensor_kept_in_float_takes_its_int8_producer_and_readers_with_it():
    from deploy.passes.qdq import resolve_keep_float, tensor_unit

    model = _repvgg_like()
    target = get_target("ort-cpu")
    full = plan_qdq(model, target)
    assert "r1" in full.activations and {"conv1", "conv2", "fc"} <= set(full.weighted)
    assert resolve_keep_float(model, ["r1", "conv2"]) == {tensor_unit("r1"), "conv2"}
    plan = plan_qdq(model, target, {tensor_unit("r1")})
    assert "r1" not in plan.activations and "c1" not in plan.activations
    assert plan.weighted == ["fc"] and set(plan.kept) == {"conv1", "conv2"}  # producer and reader of r1
    assert plan.kept["conv2"] == "reads or writes a tensor kept in float"
    graph_input = plan_qdq(model, target, {tensor_unit("input")})
    assert "input" not in graph_input.activations and "conv1" in graph_input.kept and "conv2" in graph_input.weighted


def test_constant_scale_and_shift_fold_into_the_layers_like_a_batchnorm():
    """PP-LCNetV3's learnable affine blocks: Conv → Mul(scalar) → Add(scalar); a per-channel Sub after a Gemm;
    an Add before a 1×1 Conv (no padding: folds forward); a Div by a tensor and an Add before a padded Conv stay."""
    from deploy.passes.onnx_fuse import onnx_fuse_bn

    rng = np.random.default_rng(3)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f32(rng.normal(0, 0.3, (8, 3, 3, 3))), "w1"),
             numpy_helper.from_array(f32(rng.normal(0, 0.1, 8)), "b1"),
             numpy_helper.from_array(f32(1.7), "scale"), numpy_helper.from_array(f32([-0.4]), "shift"),
             numpy_helper.from_array(f32(rng.normal(0, 1, (1, 8, 1, 1))), "pre"),
             numpy_helper.from_array(f32(rng.normal(0, 0.3, (8, 8, 1, 1))), "w2"),
             numpy_helper.from_array(f32(rng.normal(0, 1, (8, 1, 1))), "edge"),
             numpy_helper.from_array(f32(rng.normal(0, 0.3, (8, 8, 3, 3))), "w3"),
             numpy_helper.from_array(f32(rng.normal(0, 0.3, (5, 8))), "w4"),
             numpy_helper.from_array(f32(rng.normal(0, 1, 5)), "per_class")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["scale", "c1"], ["m1"], name="lab_scale"),
             helper.make_node("Add", ["m1", "shift"], ["a1"], name="lab_shift"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
             helper.make_node("Add", ["r1", "pre"], ["p1"], name="before_1x1"),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="pointwise"),
             helper.make_node("Div", ["c2", "c2"], ["d2"], name="not_constant"),
             helper.make_node("Add", ["c2", "d2"], ["s2"], name="sum"),
             helper.make_node("Add", ["s2", "edge"], ["e2"], name="before_padded"),
             helper.make_node("Conv", ["e2", "w3"], ["c3"], name="padded", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w4"], ["y"], name="fc", transB=1),
             helper.make_node("Sub", ["y", "per_class"], ["logits"], name="per_class_shift")]
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = onnx_fuse_bn(model)
    left = {n.name for n in result.model.graph.node}
    folded = {site.where for site in result.report.sites}
    assert folded == {"lab_scale", "lab_shift", "before_1x1", "per_class_shift"}, result.report.sites
    assert {"not_constant", "sum", "before_padded"} <= left  # not per-channel constants, or a padded Conv after
    x = _photos(4, offset=0)[:, :, :16, :16]
    np.testing.assert_allclose(_output(result.model, x), _output(model, x), rtol=1e-5, atol=1e-5)
