"""`onnx_fuse_hardswish`: the spelled-out HardSwish forms become one op, exactly; look-alikes stay."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.calib import load_photos
from deploy.calib.data import Preprocess
from deploy.ort import cpu_session, run_function
from deploy.passes.onnx_activations import onnx_fuse_hardswish

f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731


def _net(opset: int = 11) -> onnx.ModelProto:
    """Four gates after four convs: Paddle's Add/Clip/Mul/Div, the Mul-by-1/6 form, torch's HardSigmoid/Mul, and
    two look-alikes that are not HardSwish (x + 2.5; a gate whose Clip output is also read elsewhere)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(f32(rng.normal(0, 0.5, (8, c, 3, 3))), f"w{i}")
             for i, c in enumerate((3, 8, 8, 8, 8), 1)]
    inits += [numpy_helper.from_array(f32(v), k) for k, v in
              {"three": 3.0, "two5": 2.5, "zero": 0.0, "six": 6.0, "sixth": 1 / 6}.items()]
    clip = (lambda x, y, name: helper.make_node("Clip", [x], [y], name=name, min=0.0, max=6.0)) if opset < 11 else \
        (lambda x, y, name: helper.make_node("Clip", [x, "zero", "six"], [y], name=name))
    n = helper.make_node
    nodes = [n("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("Add", ["c1", "three"], ["a1"], name="add1"), clip("a1", "k1", "clip1"),
             n("Mul", ["c1", "k1"], ["m1"], name="mul1"), n("Div", ["m1", "six"], ["h1"], name="div1"),
             n("Conv", ["h1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("Add", ["three", "c2"], ["a2"], name="add2"), clip("a2", "k2", "clip2"),
             n("Mul", ["k2", "c2"], ["m2"], name="mul2"), n("Mul", ["m2", "sixth"], ["h2"], name="scale2"),
             n("Conv", ["h2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             n("HardSigmoid", ["c3"], ["s3"], name="hsig3", alpha=1 / 6, beta=0.5),
             n("Mul", ["c3", "s3"], ["h3"], name="mul3"),
             n("Conv", ["h3", "w4"], ["c4"], name="conv4", pads=[1, 1, 1, 1]),
             n("Add", ["c4", "two5"], ["a4"], name="add4"), clip("a4", "k4", "clip4"),
             n("Mul", ["c4", "k4"], ["m4"], name="mul4"), n("Div", ["m4", "six"], ["h4"], name="div4"),
             n("Conv", ["h4", "w5"], ["c5"], name="conv5", pads=[1, 1, 1, 1]),
             n("Add", ["c5", "three"], ["a5"], name="add5"), clip("a5", "k5", "clip5"),
             n("Mul", ["c5", "k5"], ["m5"], name="mul5"), n("Div", ["m5", "six"], ["h5"], name="div5"),
             n("Add", ["h5", "k5"], ["y"], name="reads_the_gate")]
    graph = helper.make_graph(nodes, "gates", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x, output: str = "y"):
    return run_function(cpu_session(model), [output])({"input": x})[output]


def _photos(count: int = 8) -> np.ndarray:
    return load_photos(count, Preprocess(size=(16, 16)))


def test_the_three_spellings_become_hardswish_and_look_alikes_stay():
    x = load_photos(4, Preprocess(size=(16, 16)))
    for opset in (10, 11, 14):
        model = _net(opset)
        reference = _run(model, x)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        result = onnx_fuse_hardswish(copy)
        ops = [node.op_type for node in result.model.graph.node]
        assert ops.count("HardSwish") == 3, (opset, ops)
        assert {s.where for s in result.report.sites} == {"div1", "scale2", "mul3"}
        left = {node.name for node in result.model.graph.node}
        assert {"add4", "clip4", "mul4", "div4", "add5", "clip5", "mul5", "div5"} <= left  # not HardSwish: kept
        assert not {"add1", "clip1", "mul1", "add2", "clip2", "mul2", "hsig3"} & left
        assert result.model.opset_import[0].version == max(opset, 14)
        # float rounding only: x/6 + ½ and (x + 3)/6 differ by an ulp, which five convs (gain ~4 each) amplify
        np.testing.assert_allclose(_run(result.model, x), reference, rtol=1e-4, atol=1e-4)


def test_quantize_rewrites_hardswish_first_and_says_so(cli, tmp_path):
    path = tmp_path / "gates.onnx"
    onnx.save(_net(11), str(path))
    result = cli("quantize", path, "-o", tmp_path / "q.onnx", "--shape", "1,3,16,16", "--samples", "32",
                 "--eval-samples", "16", "--no-tier2", "--no-mixed", "--allow-poor", "--json", tmp_path / "q.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "q.json").read_text())
    assert any(note.startswith("3 HardSwish written as") for note in report["notes"]), report["notes"]
    written = onnx.load(str(tmp_path / "q.onnx"))
    assert written.opset_import[0].version >= 14
    hardswish = [n.op_type for n in written.graph.node].count("HardSwish")
    if report["placement"]["chosen"] == "convs":
        assert hardswish == 3
    else:  # the elementwise placement writes them out again, as ops ONNX Runtime runs on uint8
        assert hardswish == 0 and any("written out as Add → Clip → Mul" in note for note in report["notes"])
        assert not {"HardSwish", "HardSigmoid"} & set(report["integer_kernels"]["round_trips"]["ops"])


def test_hard_activations_written_out_compute_the_same_and_run_on_uint8(tmp_path):
    """HardSwish → x · (1/6) · clip(x + 3, 0, 6) and HardSigmoid(α, β) → α · clip(x + β/α, 0, 1/α): the same function
    (float rounding only); quantized in the elementwise placement, ONNX Runtime runs neither in float."""
    from deploy.backends.ort_graph import optimized_graph, round_trips
    from deploy.passes.onnx_activations import expand_hard_activations
    from deploy.passes.qdq import divisions_to_products, insert_qdq, plan_qdq, with_outputs

    fused = onnx_fuse_hardswish(_net(13)).model
    n = helper.make_node
    fused.graph.node.append(n("HardSigmoid", ["y"], ["gate"], name="sigmoid_gate", alpha=0.2, beta=0.5))
    fused.graph.node.append(n("Mul", ["y", "gate"], ["z"], name="gated"))
    fused.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8, 16, 16]))
    expanded = onnx.ModelProto()
    expanded.CopyFrom(fused)
    result = expand_hard_activations(expanded)
    ops = [node.op_type for node in expanded.graph.node]
    assert len(result.report.sites) == 4 and "HardSwish" not in ops and "HardSigmoid" not in ops
    x = _photos()
    # float rounding only, amplified by five convs as in the fusion test above
    np.testing.assert_allclose(_run(expanded, x, "z"), _run(fused, x, "z"), rtol=1e-4, atol=1e-4)
    assert divisions_to_products(expanded) == 2  # the look-alikes' / 6, as quantize does
    plan = plan_qdq(expanded, "ort-cpu", placement="elementwise")
    gates = {t for t in plan.scaled if t.endswith("hardswish_gate")} | ({"gate"} & set(plan.scaled))
    assert len(gates) == 4  # each gate's Mul by α is a change of scale, not an op
    tensors = [t for t in plan.calibrated if t != "input"]
    outs = run_function(cpu_session(with_outputs(expanded, tensors)), tensors)({"input": x})
    ranges = {t: (float(outs[t].min()), float(outs[t].max())) for t in tensors}
    ranges["input"] = (float(x.min()), float(x.max()))
    quantized = insert_qdq(expanded, plan, ranges).model
    trips = round_trips(optimized_graph(quantized))
    # what stays float is the look-alike x + 2.5 (its Clip cannot fold: the range passes 6) and the gate read twice
    assert not {"HardSwish", "HardSigmoid"} & set(trips.ops), trips
    out, ref = _run(quantized, x, "z"), _run(fused, x, "z")
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_deploy_fuse_rewrites_hardswish_in_onnx_files_by_default(cli, tmp_path):
    path = tmp_path / "gates.onnx"
    onnx.save(_net(11), str(path))
    result = cli("fuse", path, "-o", tmp_path / "fused.onnx", "--shape", "1,3,16,16", "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "f.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["onnx_reparam", "onnx_fuse_hardswish"]
    assert [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node].count("HardSwish") == 3
