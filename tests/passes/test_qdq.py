"""Q/DQ insertion: the maths of scales and zero points, target rules checked structurally, and what ONNX
Runtime actually runs (its optimized graph) on real exports of the tiny zoo nets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.calib import load_photos
from deploy.calib.data import Preprocess
from deploy.ort import cpu_session, optimized_op_counts, run_function
from deploy.passes.qdq import (
    QuantizeError,
    activation_params,
    get_target,
    insert_qdq,
    plan_qdq,
    quantize_weight,
    resolve_keep_float,
    with_outputs,
)


def _minmax_ranges(model: onnx.ModelProto, tensors: list[str], x: np.ndarray) -> dict[str, tuple[float, float]]:
    run = run_function(cpu_session(with_outputs(model, tensors)), tensors)
    outs = run({"input": x})
    return {t: (float(outs[t].min()), float(outs[t].max())) for t in tensors}


def _photos(n: int, offset: int = 0) -> np.ndarray:
    return load_photos(n, Preprocess(size=(32, 32)), offset=offset)


@pytest.fixture(scope="module")
def tiny_resnet(tiny_onnx) -> onnx.ModelProto:
    return onnx.load(str(tiny_onnx))


def _quantize(model: onnx.ModelProto, target: str, keep=()) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    plan = plan_qdq(model, target, keep)
    ranges = _minmax_ranges(model, plan.calibrated, _photos(32))
    return insert_qdq(model, plan, ranges).model


def test_weight_quantization_is_symmetric_per_output_channel():
    w = np.array([[[[1.0, -0.5]]], [[[0.02, -0.01]]]], dtype=np.float32)  # two output channels
    q, scale = quantize_weight(w, axis=0)
    np.testing.assert_allclose(scale, [1.0 / 127, 0.02 / 127], rtol=1e-6)
    assert q.dtype == np.int8
    assert q.reshape(2, 2).tolist() == [[127, -64], [127, -64]]  # −0.5·127 = −63.5 rounds to even: −64
    q0, s0 = quantize_weight(np.zeros((3, 2), np.float32), axis=1)  # all-zero channels: scale 1, q 0
    assert s0.tolist() == [1.0, 1.0] and not q0.any()


def test_activation_parameters_follow_the_formulas():
    u8, s8 = get_target("ort-cpu"), get_target("trt")
    p = activation_params(-1.0, 3.0, u8)  # s = 4/255, z = round(1 / s) = round(63.75) = 64
    assert p.scale == pytest.approx(4 / 255) and p.zero_point == 64
    assert activation_params(0.0, 6.0, u8).zero_point == 0
    assert activation_params(0.5, 2.0, u8).scale == pytest.approx(2 / 255)  # widened to contain 0
    p = activation_params(-1.0, 3.0, s8)  # symmetric: s = 3/127, z = 0
    assert p.scale == pytest.approx(3 / 127) and p.zero_point == 0
    assert activation_params(0.0, 0.0, s8).scale == 1.0


def test_ort_cpu_every_conv_runs_as_an_integer_kernel(tiny_resnet):
    model = _quantize(tiny_resnet, "ort-cpu")
    onnx.checker.check_model(model, full_check=True)
    before = Counter(n.op_type for n in tiny_resnet.graph.node)
    ops = optimized_op_counts(model)
    assert ops.get("QLinearConv", 0) == before["Conv"] == 6
    assert ops.get("Conv", 0) == 0 and ops.get("FusedConv", 0) == 0
    assert ops.get("QLinearAdd", 0) == before["Add"] == 2
    assert ops.get("QGemm", 0) == 1
    # the uint8 Q clamps at zero, so the Relus are folded away
    assert Counter(n.op_type for n in model.graph.node)["Relu"] == 0
    x = _photos(16, offset=32)
    ref = run_function(cpu_session(tiny_resnet))({"input": x})["output"]
    out = run_function(cpu_session(model))({"input": x})["output"]
    err = (out - ref) - (out - ref).mean(1, keepdims=True)
    centred = ref - ref.mean(1, keepdims=True)
    assert 10 * np.log10((centred ** 2).sum() / (err ** 2).sum()) > 20


def test_trt_target_obeys_explicit_quantization_rules(tiny_resnet):
    model = _quantize(tiny_resnet, "trt")
    onnx.checker.check_model(model, full_check=True)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero = init[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), node.name  # int8, zero point 0
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in weighted:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert init[dq.input[0]].dtype == np.int8
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert axis == 0 and init[dq.input[1]].shape == (init[dq.input[0]].shape[0],)
        if len(node.input) > 2:  # TensorRT takes float bias
            assert node.input[2] in init and init[node.input[2]].dtype == np.float32
        assert producers[node.input[0]].op_type == "DequantizeLinear"
        assert init[producers[node.input[0]].input[1]].shape == ()  # activations per tensor
    # Relu is kept (symmetric zero point cannot absorb it)
    assert Counter(n.op_type for n in model.graph.node)["Relu"] == 5


def test_keep_float_first_and_last(tiny_resnet):
    model = onnx.ModelProto.FromString(tiny_resnet.SerializeToString())
    keep = resolve_keep_float(model, ["first", "last"])
    names = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert keep == {names[0], names[-1]}
    quantized = _quantize(tiny_resnet, "ort-cpu", keep)
    ops = optimized_op_counts(quantized)
    assert ops.get("QLinearConv", 0) == 5 and ops.get("Conv", 0) == 1 and ops.get("QGemm", 0) == 0
    with pytest.raises(QuantizeError, match="no node, tensor or op type"):
        resolve_keep_float(model, ["conv_does_not_exist"])


def test_model_without_quantizable_ops_is_refused():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(QuantizeError, match="no quantizable op"):
        plan_qdq(model, "ort-cpu")


def test_unknown_target_and_missing_ranges(tiny_resnet):
    with pytest.raises(QuantizeError, match="unknown target"):
        get_target("tpu")
    model = onnx.ModelProto.FromString(tiny_resnet.SerializeToString())
    plan = plan_qdq(model, "ort-cpu")
    with pytest.raises(QuantizeError, match="lacks"):
        insert_qdq(model, plan, {})


def _conv_graph(extra_nodes, outputs, inits=(), ir_inputs=False):
    """input (1,3,8,8) → Conv(W,b) → c, then ``extra_nodes``; unnamed nodes, like some exporters write."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "B")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["c"], pads=[1, 1, 1, 1]), *extra_nodes]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    initializers = [w, b, *inits]
    inputs = [x] + ([helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers]
                    if ir_inputs else [])
    graph = helper.make_graph(nodes, "g", inputs, outs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run_both(model, plan_target="ort-cpu"):
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    plan = plan_qdq(copy, plan_target)
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    quantized = insert_qdq(copy, plan, _minmax_ranges(copy, plan.calibrated, x)).model
    ref = run_function(cpu_session(model))({"input": x})
    out = run_function(cpu_session(quantized))({"input": x})
    return quantized, ref, out


def test_clip_with_a_computed_max_is_not_folded():
    # Clip(c, 0, max(input)·0.1): the bound depends on the data, so the uint8 Q cannot stand in for it
    nodes = [helper.make_node("ReduceMax", ["input"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "k"], ["hi"]),
             helper.make_node("Clip", ["c", "zero", "hi"], ["r"]), helper.make_node("Conv", ["r", "W2"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "k"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.random.default_rng(2).normal(size=(2, 4, 1, 1)).astype(np.float32), "W2")]
    model = _conv_graph(nodes, ["y"], inits)
    quantized, ref, out = _run_both(model)
    assert Counter(n.op_type for n in quantized.graph.node)["Clip"] == 1  # kept: its bound is data
    # folded, the Clip's bound would be lost and y would be several times too large
    assert np.abs(out["y"] - ref["y"]).max() < 0.5 * np.abs(ref["y"]).max()


def test_clip_bounds_of_shape_one_and_ir3_initializer_inputs():
    nodes = [helper.make_node("Clip", ["c", "lo", "hi"], ["r"]), helper.make_node("Conv", ["r", "W2"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0.0], np.float32), "lo"),
             numpy_helper.from_array(np.array([6.0], np.float32), "hi"),
             numpy_helper.from_array(np.random.default_rng(2).normal(size=(2, 4, 1, 1)).astype(np.float32), "W2")]
    model = _conv_graph(nodes, ["y"], inits, ir_inputs=True)
    quantized, ref, out = _run_both(model)
    assert Counter(n.op_type for n in quantized.graph.node)["Clip"] == 0  # folded into the uint8 Q
    assert {i.name for i in quantized.graph.input} <= {"input"} | {t.name for t in quantized.graph.initializer}
    assert np.abs(out["y"] - ref["y"]).max() < 0.05 * np.abs(ref["y"]).max()


def test_keep_float_on_unnamed_nodes_and_constant_concat():
    shape = [helper.make_node("Concat", ["s0", "s1"], ["shp"], axis=0),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Reshape", ["r", "shp"], ["y"])]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "s0"),
             numpy_helper.from_array(np.array([256], np.int64), "s1")]
    model = _conv_graph(shape, ["y"], inits)
    assert resolve_keep_float(model, ["first"]) == {model.graph.node[0].name} and model.graph.node[0].name
    plan = plan_qdq(model, "ort-cpu")
    assert "shp" not in plan.activations  # an all-constant Concat is shape arithmetic, not data
