"""The fp16 pass on real exports and on hand-built graphs: float32 at the graph's edges, float16 weights and
compute inside, block-listed ops fed through Casts to float32, the fewest Casts an edge-wise placement needs,
clamped weights counted, and outputs within the FP16 profile (cosine ≥ 0.9999, relative
error ≤ 1e-2) of the float32 model on the bundled photos.

Two runtimes judge the numbers. ONNX Runtime 1.32's CPU build has no float16 kernel for Conv, Relu, Add,
MaxPool, GlobalAveragePool or Gemm (only data movement like Flatten/Concat/Transpose, Clip and
LayerNormalization have one); it still runs the file, because its InsertCastTransformer wraps each such node
in Casts to float32 and then drops the float16 round trips between neighbours, so on ORT CPU only the weights
and the input are rounded. The onnx reference evaluator keeps every activation in float16, closer to what a
strongly typed TensorRT engine does; on these tiny nets it is fast enough to run too.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from deploy.artifacts.numerics import make_realistic
from deploy.calib import Preprocess, load_photos
from deploy.models import create_model
from deploy.passes.core import get_pass
from deploy.passes.fp16 import DEFAULT_BLOCK_OPS, convert_fp16

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
SHAPE = (1, 3, 32, 32)


def photos(n: int = 4) -> np.ndarray:
    return load_photos(n, Preprocess.for_input_shape(SHAPE))


def export(module: nn.Module, path) -> onnx.ModelProto:
    module = make_realistic(module, SHAPE)
    x = torch.from_numpy(photos(1))
    torch.onnx.export(module.eval(), x, str(path), opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}}, input_names=["input"])
    return onnx.load(str(path))


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def run_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0]


def assert_fp16_profile(a: np.ndarray, b: np.ndarray) -> None:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    relative = float(np.abs(a - b).max() / np.abs(a).max())
    assert cosine >= 0.9999 and relative <= 1e-2, f"cosine {cosine:.6f}, relative error {relative:.2e}"


def elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of ``name``: initializer, Constant output, graph input/output or Cast output."""
    graph = model.graph
    for t in graph.initializer:
        if t.name == name:
            return t.data_type
    for vi in (*graph.input, *graph.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    for node in graph.node:
        if name in node.output:
            if node.op_type == "Constant":
                return node.attribute[0].t.data_type
            if node.op_type == "Cast":
                return helper.get_attribute_value(node.attribute[0])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}[name]


def producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if name in n.output), None)


def through_identity(model: onnx.ModelProto, name: str) -> str:
    """The exporter aliases shared weights with Identity nodes: follow them back to the initializer."""
    node = producer(model, name)
    while node is not None and node.op_type == "Identity":
        name = node.input[0]
        node = producer(model, name)
    return name


def check_invariants(model: onnx.ModelProto) -> None:
    """Valid, float32 at the edges, Conv weights float16, block-listed ops read float32 through Casts."""
    onnx.checker.check_model(model, full_check=True)
    assert all(v.type.tensor_type.elem_type == FLOAT for v in (*model.graph.input, *model.graph.output))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            for name in node.input[1:]:
                assert inits[through_identity(model, name)].data_type == FLOAT16, node.name
        if node.op_type in DEFAULT_BLOCK_OPS:
            for name in filter(None, node.input):
                kind = elem_type(model, name)
                if kind in (FLOAT, FLOAT16):
                    assert kind == FLOAT, f"{node.op_type} {node.name} reads {name} in float16"
                    source = producer(model, name)
                    assert name in inits or source is None or source.op_type in DEFAULT_BLOCK_OPS or \
                        source.op_type == "Cast", f"{node.op_type} reads {name} from {source.op_type}"


# ---------------------------------------------------------------------------------------------------------------
# Real exports


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-mobilenet"])
def test_tiny_zoo_models_in_fp16(name, tmp_path):
    model = export(create_model(name), tmp_path / f"{name}.onnx")
    result = convert_fp16(model)
    converted, report = result.model, result.report
    check_invariants(converted)
    casts = [n for n in converted.graph.node if n.op_type == "Cast"]
    assert report.casts_inserted == len(casts) == 2  # one at the input, one at the output: nothing is blocked
    assert report.nodes_fp16 == len(model.graph.node) and report.nodes_fp32 == {}
    assert report.initializers_fp16 == len(model.graph.initializer)
    assert report.params_bytes_after * 2 == report.params_bytes_before
    assert report.changed and report.to_dict()["fp16"]["casts_inserted"] == 2
    x = photos(4)
    expected = run_ort(model, x)
    assert_fp16_profile(expected, run_ort(converted, x))
    assert_fp16_profile(expected, run_reference(converted, x))


class MixedNet(nn.Module):
    """Conv, ReLU6 (Clip with min/max), BatchNormalization that cannot fold (after a max-pool), a nearest
    upsample (Resize with float scales), a spatial mean (ReduceMean), LayerNorm and Softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.bn(F.max_pool2d(F.relu6(self.conv1(x)), 2))
        x = F.interpolate(F.relu(self.conv2(x)), scale_factor=2.0, mode="nearest")
        y = self.norm(x.mean(dim=(2, 3)))
        return torch.softmax(self.fc(y) * 4.0, dim=1)


def test_blocked_ops_run_in_float32(tmp_path):
    model = export(MixedNet(), tmp_path / "mixed.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"Clip", "BatchNormalization", "Resize", "ReduceMean", "LayerNormalization", "Softmax"} <= ops
    result = convert_fp16(model)
    converted, report = result.model, result.report
    check_invariants(converted)
    assert report.nodes_fp32 == {"BatchNormalization": 1, "ReduceMean": 1, "LayerNormalization": 1, "Softmax": 1}
    # input→fp16, MaxPool→BN fp32, BN→Conv fp16, Resize→ReduceMean fp32, LayerNorm→Gemm fp16, Mul→Softmax fp32;
    # ReduceMean→LayerNorm stay float32 between them, and Softmax's output is float32 already
    assert report.casts_inserted == sum(n.op_type == "Cast" for n in converted.graph.node) == 6
    assert report.constants_fp16 == 3  # Clip's min and max, Mul's 4.0; Resize's scales stay float32
    for node in converted.graph.node:
        if node.op_type == "Clip":  # Clip runs in float16, so its min/max must be float16 too
            assert [elem_type(converted, name) for name in node.input if name] == [FLOAT16] * 3
        if node.op_type == "Resize":  # the data in float16; scales are float32 by the schema
            assert elem_type(converted, node.input[0]) == FLOAT16
            assert elem_type(converted, node.input[2]) == FLOAT
        if node.op_type == "BatchNormalization":  # its statistics stay float32
            assert all(elem_type(converted, name) == FLOAT for name in node.input[1:])
    x = photos(4)
    expected = run_ort(model, x)
    assert_fp16_profile(expected, run_ort(converted, x))
    assert_fp16_profile(expected, run_reference(converted, x))


# ---------------------------------------------------------------------------------------------------------------
# Hand-built graphs


def make_model(nodes, inits, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    """A model with value_info filled by shape inference, so the pass has to rewrite it consistently."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def conv_chain(*ops: str, fanout: bool = False, weight: np.ndarray | None = None) -> onnx.ModelProto:
    """x → Conv → ops… → y (each op unary on the previous output); with ``fanout`` the Conv output also
    feeds a second ReduceMean whose result is added to the end."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) if weight is None else weight
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 0.1, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t0"], name="conv", pads=[1, 1, 1, 1])]
    for i, op in enumerate(ops):
        attrs = {"axes": [2, 3]} if op.startswith("Reduce") else {"axis": 1} if op == "Softmax" else {}
        nodes.append(helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=f"{op.lower()}{i}", **attrs))
    last = f"t{len(ops)}"
    if fanout:
        nodes.append(helper.make_node("ReduceMean", ["t0"], ["side"], name="side_mean", axes=[2, 3]))
        nodes.append(helper.make_node("Add", [last, "side"], ["y"], name="join"))
        last = "y"
    x = helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])
    return make_model(nodes, inits, [x], [helper.make_tensor_value_info(last, FLOAT, None)])


@pytest.mark.parametrize(("ops", "fanout", "keep_io", "casts"), [
    # x→fp16 | Conv | →fp32 | ReduceMean | →fp16 | Relu | →fp32: four edges change precision
    (("ReduceMean", "Relu"), False, True, 4),
    # float16 graph I/O: only the two edges around ReduceMean
    (("ReduceMean", "Relu"), False, False, 2),
    # two blocked neighbours share float32: still four, no fp16→fp32→fp16 pair between them
    (("ReduceMean", "Softmax", "Relu"), False, True, 4),
    # the Conv output read by two ReduceMeans: one shared Cast; the side branch joins Relu's float16 output
    (("ReduceMean", "Relu"), True, True, 5),
])
def test_fewest_casts(ops, fanout, keep_io, casts):
    model = conv_chain(*ops, fanout=fanout)
    result = convert_fp16(model, keep_io_types=keep_io)
    converted = result.model
    onnx.checker.check_model(converted, full_check=True)
    assert result.report.casts_inserted == sum(n.op_type == "Cast" for n in converted.graph.node) == casts
    blocked = sum(op in DEFAULT_BLOCK_OPS for op in ops) + fanout
    assert sum(result.report.nodes_fp32.values()) == blocked
    io_type = FLOAT if keep_io else FLOAT16
    assert [v.type.tensor_type.elem_type for v in (*converted.graph.input, *converted.graph.output)] == [io_type] * 2
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = run_reference(model, x)
    assert_fp16_profile(expected, run_reference(converted, x.astype(np.float16) if not keep_io else x))
    if keep_io:
        assert_fp16_profile(expected, run_ort(converted, x))


def test_huge_weights_clamp_and_tiny_ones_flush():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0], w[1, 0, 0, 0], w[2, 0, 0, 0] = 1e6, -np.inf, 1e-9
    result = convert_fp16(conv_chain("Relu", weight=w))
    report = result.report
    assert report.weights_clamped == 2 and report.weights_flushed == 1
    assert any("65504" in warning and "2 weight" in warning for warning in report.warnings)
    half = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "w"))
    assert half.dtype == np.float16
    assert half[0, 0, 0, 0] == 65504 and half[1, 0, 0, 0] == -65504 and half[2, 0, 0, 0] == 0
    assert np.isfinite(half).all()


def test_constants_shared_initializers_and_value_info():
    """A Constant node read in float16 converts; an initializer read by a float16 Add and a blocked Pow keeps
    its float32 self for Pow and gains a float16 copy; value_info agrees with strict shape inference."""
    b = numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "b")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.full(1, 0.5, np.float32))),
        helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "b"], ["a"], name="add"),
        helper.make_node("Pow", ["a", "b"], ["p"], name="pow"),
        helper.make_node("Relu", ["p"], ["y"], name="relu"),
    ]
    x = helper.make_tensor_value_info("x", FLOAT, [1, 3, 4, 4])
    model = make_model(nodes, [b], [x], [helper.make_tensor_value_info("y", FLOAT, [1, 3, 4, 4])])
    assert len(model.graph.value_info) == 4
    result = convert_fp16(model)
    converted, report = result.model, result.report
    onnx.checker.check_model(converted, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in converted.graph.value_info}
    assert declared == {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info
                        if vi.name in declared}
    assert declared["m"] == declared["a"] == FLOAT16 and declared["p"] == FLOAT
    assert report.constants_fp16 == 1 and report.initializers_fp16 == 1 and report.nodes_fp32 == {"Pow": 1}
    inits = {t.name: t.data_type for t in converted.graph.initializer}
    assert inits == {"b": FLOAT, "b_fp16": FLOAT16}
    add = next(n for n in converted.graph.node if n.name == "add")
    assert add.input[1] == "b_fp16"
    # x→fp16, a→fp32 for Pow, p→fp16 for Relu, y→fp32
    assert report.casts_inserted == 4
    data = np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32)
    assert_fp16_profile(run_reference(model, data), run_ort(converted, data))


def test_reshape_shape_and_cast_from_integers():
    """Reshape's int64 shape is left alone; a Cast int64 → float read only in float16 becomes a Cast to float16."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Cast", ["k"], ["kf"], name="cast_k", to=FLOAT),
        helper.make_node("Mul", ["r", "kf"], ["y"], name="mul"),
    ]
    inits = [numpy_helper.from_array(np.array([1, 12], np.int64), "shape")]
    inputs = [helper.make_tensor_value_info("x", FLOAT, [1, 3, 2, 2]),
              helper.make_tensor_value_info("k", TensorProto.INT64, [1])]
    model = make_model(nodes, inits, inputs, [helper.make_tensor_value_info("y", FLOAT, [1, 12])])
    result = convert_fp16(model)
    converted = result.model
    onnx.checker.check_model(converted, full_check=True)
    cast_k = next(n for n in converted.graph.node if n.name == "cast_k")
    assert helper.get_attribute_value(cast_k.attribute[0]) == FLOAT16
    assert next(t for t in converted.graph.initializer if t.name == "shape").data_type == TensorProto.INT64
    assert result.report.casts_inserted == 2  # x in, y out
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    (y,) = session.run(None, {"x": x, "k": np.array([3], np.int64)})
    assert y.dtype == np.float32 and np.array_equal(y, 3 * x.reshape(1, 12))


def test_block_nodes_and_block_ops_options():
    model = conv_chain("Relu", "Sigmoid")
    by_name = convert_fp16(model, block_nodes=["relu0"]).report
    assert by_name.nodes_fp32 == {"Relu": 1} and by_name.casts_inserted == 4  # x→16, Conv→32, Relu→16, y→32
    assert any(s.where == "relu0" and "block_nodes" in s.what for s in by_name.skipped)
    by_op = convert_fp16(model, block_ops={"Sigmoid"}).report
    assert by_op.nodes_fp32 == {"Sigmoid": 1} and by_op.casts_inserted == 2  # x→16, Relu→32; y is float32
    nothing = convert_fp16(model, block_ops=()).report
    assert nothing.nodes_fp32 == {} and nothing.nodes_fp16 == 3


def test_node_between_float32_nodes_stays_float32():
    """A decomposed normalisation: Add(var, eps) sits between ReduceMean and Sqrt, both blocked; float16 there
    would add a Cast pair and round var + eps, so it stays float32 with its eps."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "c"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["var"], name="mean", axes=[1]),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
             helper.make_node("Div", ["c", "sd"], ["n"], name="div"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    model = make_model(nodes, [w, eps], [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", FLOAT, None)])
    result = convert_fp16(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report.nodes_fp32 == {"ReduceMean": 1, "Add": 1, "Sqrt": 1}
    assert any(s.where == "add_eps" and "Cast pair" in s.what for s in result.report.skipped)
    assert result.report.casts_inserted == 4  # x→16, square→32, sqrt→16, y→32
    assert {t.name: t.data_type for t in result.model.graph.initializer} == {"w": FLOAT16, "eps": FLOAT}
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_fp16_profile(run_reference(model, x), run_ort(result.model, x))


def test_outputs_read_inside_and_subgraphs_and_a_second_run():
    """An output also read by another node keeps its name through a Cast; an If kept float32 reads its outer
    float16 tensor through a Cast renamed inside its branches; converting twice changes nothing more."""
    branch = {name: helper.make_graph([helper.make_node(op, ["r"], [f"{name}_out"])], name, [],
                                      [helper.make_tensor_value_info(f"{name}_out", FLOAT, None)])
              for name, op in (("then", "Sigmoid"), ("else", "Neg"))}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("If", ["c"], ["i"], name="if", then_branch=branch["then"], else_branch=branch["else"]),
             helper.make_node("Mul", ["i", "r"], ["y"], name="mul")]
    inputs = [helper.make_tensor_value_info("x", FLOAT, [2, 3]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    outputs = [helper.make_tensor_value_info(name, FLOAT, [2, 3]) for name in ("r", "y")]
    model = make_model(nodes, [], inputs, outputs)
    result = convert_fp16(model)
    converted = result.model
    onnx.checker.check_model(converted, full_check=True)
    assert result.report.nodes_fp32 == {"If": 1}
    # x→16, r→32 for the If's branches, i→16, r and y out → 32
    assert result.report.casts_inserted == 5
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    relu = np.maximum(x, 0)
    for cond, branch_value in ((True, 1 / (1 + np.exp(-relu))), (False, -relu)):
        r, y = session.run(None, {"x": x, "c": np.array(cond)})
        np.testing.assert_allclose(r, relu, rtol=1e-3)
        np.testing.assert_allclose(y, branch_value * relu, rtol=2e-3, atol=1e-3)
    again = convert_fp16(converted)
    assert not again.report.changed and again.report.casts_inserted == 0 and again.model.graph == converted.graph


def test_model_without_float_tensors_is_unchanged():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Add", ["s", "one"], ["y"], name="add")]
    inits = [numpy_helper.from_array(np.ones(2, np.int64), "one")]
    model = make_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.INT32, [2, 5])],
                       [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    result = convert_fp16(model)
    assert not result.report.changed
    assert result.report.casts_inserted == result.report.nodes_fp16 == result.report.initializers_fp16 == 0
    assert result.report.params_bytes_after == result.report.params_bytes_before == 16
    assert result.model.graph == model.graph


def test_registered_as_an_onnx_pass():
    info = get_pass("fp16")
    assert info.stage == "onnx" and info.fn is convert_fp16
