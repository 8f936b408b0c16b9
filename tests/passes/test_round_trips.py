"""Float islands between int8 ops, counted on the graph ONNX Runtime runs; and the fixtures int8 speed is won on
(tests/fixtures/fast_int8.py: a YOLOv8-like detector, a PP-LCNet-like classifier) run with none left."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deploy.backends.ort_graph import op_counts, optimized_graph, round_trips, why_float
from deploy.harness.report import runs_as
from deploy.ort import cpu_session, run_function
from deploy.passes.onnx_activations import expand_hard_activations
from deploy.passes.qdq import divisions_to_products, insert_qdq, plan_qdq, with_outputs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fast_int8.py"


def _island_graph() -> onnx.ModelProto:
    """x → Q → DQ → Sigmoid → Mul(·, DQ) → Q → DQ → Exp → y: one island (Sigmoid, Mul) between a DQ and a Q; the
    Exp after the last DQ is the graph's own float tail, and the weight-like DQ of a constant starts nothing."""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.array(v, dt), k) for k, v, dt in
             (("s", 0.05, np.float32), ("z", 128, np.uint8), ("wq", [3, 4], np.uint8))]
    nodes = [n("QuantizeLinear", ["x", "s", "z"], ["xq"]), n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             n("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
             n("Sigmoid", ["xd"], ["g"]), n("Mul", ["g", "xd"], ["m"]), n("Add", ["m", "wd"], ["a"]),
             n("QuantizeLinear", ["a", "s", "z"], ["aq"]), n("DequantizeLinear", ["aq", "s", "z"], ["ad"]),
             n("Exp", ["ad"], ["y"])]
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_round_trips_count_islands_between_dequantize_and_quantize():
    trips = round_trips(_island_graph())  # as written: no ORT optimizer between us and the count
    assert trips.count == 1 and trips.ops == {"Sigmoid": 1, "Mul": 1, "Add": 1} and trips.dequantize == 2
    assert "1 round trip(s)" in trips.text() and "1 Sigmoid" in trips.text()
    line = runs_as({"QLinearConv": 3, "Sigmoid": 1}, trips.to_dict())
    assert line.endswith("1 round trip(s) DequantizeLinear → float → QuantizeLinear, through 1 Add (kept in float), "
                         "1 Mul (kept in float), 1 Sigmoid (kept in float)")
    assert why_float({"HardSigmoid": 30}) == "30 HardSigmoid (no integer kernel)"
    assert runs_as({"QLinearConv": 3}, {"count": 0, "ops": {}}).endswith("no round trip DequantizeLinear → float "
                                                                          "→ QuantizeLinear")


def _fixture(name: str, shape: tuple[int, ...], tmp_path: Path) -> onnx.ModelProto:
    spec = importlib.util.spec_from_file_location("fast_int8", FIXTURES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = getattr(module, name)(trained=False)  # what runs as what does not depend on the weights
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, torch.zeros(shape), str(path), input_names=["input"], output_names=["out"],
                      opset_version=17, dynamo=False, dynamic_axes={"input": {0: "n"}, "out": {0: "n"}})
    return onnx.load(str(path))


def _quantize(model: onnx.ModelProto, placement: str, x: np.ndarray, plans: dict | None = None) -> onnx.ModelProto:
    """The placement with min/max ranges over ``x`` (what runs as what does not depend on the ranges)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if placement == "elementwise":  # what deploy quantize does for this placement
        divisions_to_products(model)
        expand_hard_activations(model)
    plan = plan_qdq(model, "ort-cpu", placement=placement)
    if plans is not None:
        plans[placement] = (onnx.ModelProto.FromString(model.SerializeToString()), plan)
    tensors = [t for t in plan.calibrated if t != "input"]
    outs = run_function(cpu_session(with_outputs(model, tensors)), tensors)({"input": x})
    ranges = {t: (float(outs[t].min()), float(outs[t].max())) for t in tensors}
    ranges["input"] = (float(x.min()), float(x.max()))
    return insert_qdq(model, plan, ranges).model


@pytest.mark.parametrize(("name", "floats"), [("yolo", {"Sigmoid", "Mul"}), ("lcnet", {"HardSigmoid", "Mul"})])
def test_fixtures_run_integer_between_their_convs(name, floats, tmp_path):
    """SiLU (Sigmoid, Mul), C2f's split and concat, SPPF's pools, the upsample; HardSwish and SE: the elementwise
    placement leaves no round trip, where the convs placement leaves one per activation."""
    fp32 = _fixture(name, (1, 3, 64, 64), tmp_path)
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    convs = round_trips(optimized_graph(_quantize(fp32, "convs", x)))
    assert convs.count >= 10 and floats <= set(convs.ops), convs
    plans: dict = {}
    quantized = _quantize(fp32, "elementwise", x, plans)
    runs = optimized_graph(quantized)
    trips, ops = round_trips(runs), op_counts(runs)
    assert trips.count == 0, trips  # DequantizeLinear left: only into the float outputs
    assert not floats & set(trips.ops) and ops.get("QLinearConv", 0) >= 30 and ops.get("Conv", 0) == 0, ops
    if name == "yolo":
        assert ops["QLinearSigmoid"] == ops["QLinearMul"] + 6  # 6 score sigmoids per level pair → graph output
        # a Concat's inputs read by nothing else write its integers directly (one scale); a split half that a
        # bottleneck also reads keeps its own
        model, plan = plans["elementwise"]
        readers: dict[str, int] = {}
        for node in model.graph.node:
            for t in node.input:
                readers[t] = readers.get(t, 0) + 1
        concats = [n for n in model.graph.node if n.op_type == "Concat" and plan.activations.get(n.output[0])]
        shared = [t for n in concats for t in n.input if plan.activations.get(t) == n.output[0]]
        own = [t for n in concats for t in n.input if t in plan.activations and plan.activations[t] != n.output[0]]
        assert len(shared) >= 10 and all(readers[t] == 1 for t in shared)
        assert own and all(readers[t] > 1 or plan.activations[t] != t for t in own)
        assert ops.get("QLinearConcat", 0) >= 10 and "Resize" in ops and {"Split", "Slice"} & set(ops), ops
    else:
        assert ops["QLinearAdd"] == ops["QLinearMul"] and ops.get("QLinearGlobalAveragePool", 0) == 3
    out = run_function(cpu_session(quantized), ["out"])({"input": x})["out"]
    ref = run_function(cpu_session(fp32), ["out"])({"input": x})["out"]
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9  # the same function, roughly (seeded weights)


def test_a_bias_written_as_reshape_folds_into_its_conv():
    """Paddle2ONNX writes a conv bias as Reshape(bias, [1, C, 1, 1]) → Add: a constant the runtime folds. Folded
    first, it joins its conv (no Add left, no QLinearAdd pass), and the function is unchanged."""
    from deploy.passes.onnx_fuse import onnx_fuse_bn
    from deploy.passes.onnx_graph import fold_shape_constants

    rng = np.random.default_rng(0)
    n = helper.make_node
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, 8, 1, 1], np.int64), "shape")]
    nodes = [n("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]), n("Reshape", ["b", "shape"], ["b4"]),
             n("Add", ["c", "b4"], ["out"])]
    graph = helper.make_graph(nodes, "bias", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    ref = run_function(cpu_session(model), ["out"])({"input": x})["out"]
    assert fold_shape_constants(model) == 1 and [n.op_type for n in model.graph.node] == ["Conv", "Add"]
    fused = onnx_fuse_bn(model).model
    assert [n.op_type for n in fused.graph.node] == ["Conv"]
    out = run_function(cpu_session(fused), ["out"])({"input": x})["out"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
