"""Each concept written once, tested once: the held-out judge and budget, the top-1 helpers, the output-path
check and the staged writer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.artifacts.files import output_path, staged_output
from deploy.errors import BadInputError
from deploy.harness.compare import Tolerance, accuracy, agreement
from deploy.harness.heldout import Budget, HeldOut, top1_drop, wilson_interval


def test_top1_helpers_are_percent():
    a = np.array([[3.0, 1.0], [0.0, 2.0], [5.0, 4.0], [1.0, 9.0]])
    b = np.array([[2.0, 1.0], [3.0, 2.0], [5.0, 4.0], [1.0, 0.0]])
    assert agreement(a, b) == 50.0
    assert accuracy(a, np.array([0, 1, 0, 0])) == 75.0
    assert accuracy(a, np.eye(2)[[0, 1, 0, 0]]) == 75.0  # one-hot labels
    assert accuracy(a, None) is None and agreement(a[:, :1].ravel(), b[:, :1].ravel()) is None
    assert wilson_interval(58, 64) == (81.02, 95.63)  # 90.6 % of 64
    assert top1_drop(90.0, 92.5, 99.0) == pytest.approx(2.5)  # labels: the accuracy drop
    assert top1_drop(None, None, 97.0) == pytest.approx(3.0)  # no labels: disagreement


def test_budget_misses_name_what_is_over():
    class Judged:
        drop, centred_sqnr_db = 2.0, 18.0

    assert Budget(1.0, 20.0).misses(Judged()) == ["drop 2.00 > 1 points", "centred SQNR 18.0 < 20 dB"]
    assert Budget(2.0).misses(Judged()) == []
    Judged.drop = None
    assert "no top-1" in Budget(1.0).misses(Judged())[0]
    with pytest.raises(BadInputError, match="--max-drop"):
        Budget(150.0)
    assert Budget(0.5).describe(labels=True) == "accuracy drop ≤ 0.5 points"


def _linear_model(path, weight: np.ndarray) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[1]])
    w = numpy_helper.from_array(weight.astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_quantize_and_the_pipeline_judge_alike(tmp_path):
    """The quantizer's judge and the pipeline's certifier are one HeldOut: the same figures on the same data."""
    from deploy.jobs.quantize import _Judge
    from deploy.pipelines.certify import Certifier

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 4))
    _linear_model(tmp_path / "ref.onnx", weight)
    _linear_model(tmp_path / "cand.onnx", weight + 0.3 * rng.standard_normal(weight.shape))
    data = rng.standard_normal((32, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 32)
    cert = Certifier(tmp_path / "ref.onnx", data, labels, threads=1, batch=8).certify(tmp_path / "cand.onnx")
    judge = _Judge(onnx.load(str(tmp_path / "ref.onnx")), [{"x": data[i:i + 8]} for i in range(0, 32, 8)], labels, 1)
    score = judge.score(onnx.load(str(tmp_path / "cand.onnx")), "cand")
    assert isinstance(judge, HeldOut)
    assert score.top1_agreement == pytest.approx(cert.agreement) and score.top1_agreement < 100
    assert score.accuracy == pytest.approx(cert.accuracy)
    assert score.centred_sqnr_db == pytest.approx(cert.centred_sqnr_db)
    assert score.drop == pytest.approx(cert.drop) == pytest.approx(judge.drop(score))
    assert score.top1_interval == tuple(cert.agreement_interval)
    direct = HeldOut([data], labels, reference=data @ weight).judge((data @ weight).astype(np.float32), "y",
                                                                     Tolerance())
    assert direct.agreement == 100.0 and direct.drop == 0.0


def test_output_path_is_checked_once_for_every_output(tmp_path):
    assert output_path(tmp_path / "a.onnx", "-o", ".onnx") == tmp_path / "a.onnx"
    with pytest.raises(BadInputError, match=r"-o .*must end in \.onnx"):
        output_path(tmp_path / "a.txt", "-o", ".onnx")
    with pytest.raises(BadInputError, match="--json .*does not exist"):
        output_path(tmp_path / "no" / "r.json", "--json")
    with pytest.raises(BadInputError, match="is a folder"):
        output_path(tmp_path, "--json")


def test_a_staged_output_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "m.onnx"
    with staged_output(out) as staged:
        staged.path.write_bytes(b"model")
        staged.path.with_name("m.onnx.data").write_bytes(b"weights")
        staged.commit()
    assert out.read_bytes() == b"model" and (tmp_path / "m.onnx.data").read_bytes() == b"weights"
    with pytest.raises(RuntimeError), staged_output(tmp_path / "n.onnx") as staged:
        staged.path.write_bytes(b"half")
        raise RuntimeError("the proof failed")
    with staged_output(tmp_path / "k.onnx") as staged:
        staged.path.write_bytes(b"not proven")  # never committed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
