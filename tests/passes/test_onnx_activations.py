"""`onnx_fuse_hardswish`: the spelled-out HardSwish forms become one op, exactly; look-alikes stay."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.backends.ort_runner import cpu_session, run_function
from deploy.calib import load_photos
from deploy.calib.data import Preprocess
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


def _run(model, x):
    return run_function(cpu_session(model), ["y"])({"input": x})["y"]


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
    assert [n.op_type for n in written.graph.node].count("HardSwish") == 3
    assert written.opset_import[0].version >= 14


def test_deploy_fuse_rewrites_hardswish_in_onnx_files_by_default(cli, tmp_path):
    path = tmp_path / "gates.onnx"
    onnx.save(_net(11), str(path))
    result = cli("fuse", path, "-o", tmp_path / "fused.onnx", "--shape", "1,3,16,16", "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "f.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["onnx_reparam", "onnx_fuse_hardswish"]
    assert [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node].count("HardSwish") == 3
