"""Acceptance for the exact passes through `deploy fuse`: every zoo model fused and proven on real photos;
the ONNX stage alone, from train-form exports, reaches the deploy forms' structure without knowing the blocks."""

import collections
import io
import json
import warnings

import numpy as np
import onnx
import pytest
import torch

from deploy.artifacts.spec import load_artifact, load_onnx_artifact
from deploy.jobs.export import export_onnx
from deploy.jobs.fuse import fuse_artifact, parse_passes
from deploy.models import create_model, list_models

ZOO = [n for n in list_models() if not n.startswith("vgg")]  # the VGGs add 60 s and nothing new: slow suite


def ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def fuse_and_check(name, tmp_path, passes=None):
    artifact = load_artifact(name)
    out = tmp_path / f"{name}.fused.onnx"
    report = fuse_artifact(artifact, out, passes=parse_passes(passes, "torch"), samples=4)
    return report, out


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_fuses_exactly(name, tmp_path):
    report, out = fuse_and_check(name, tmp_path)
    worst = report.check.worst()
    assert report.check.passed and "photos" in report.check.data
    assert worst.max_rel <= max(1e-5, 2 * worst.reference_fp32_error)
    assert "BatchNormalization" not in ops(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11_bn", "vgg16_bn"])
def test_vggs_fuse_exactly(name, tmp_path):
    report, out = fuse_and_check(name, tmp_path)
    assert report.check.passed and "BatchNormalization" not in ops(out)


def deploy_form_convs(name: str) -> int:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(create_model(name, deploy=True).eval(), (torch.zeros(1, 3, 224, 224),), buffer,
                          dynamo=False, opset_version=17)
    return sum(n.op_type == "Conv" for n in onnx.load_from_string(buffer.getvalue()).graph.node)


def test_repvgg_a0_both_stages_give_the_deploy_structure(tmp_path):
    _, torch_stage = fuse_and_check("repvgg_a0", tmp_path)
    train = tmp_path / "train.onnx"
    export_onnx(load_artifact("repvgg_a0"), train, verify=False)
    assert ops(train)["Add"] > 0 and ops(train)["BatchNormalization"] > 0
    report = fuse_artifact(load_onnx_artifact(train), tmp_path / "onnx_stage.onnx", passes=["onnx_reparam"],
                           samples=4)
    assert report.check.passed
    expected = {"Conv": 22, "Gemm": 1, "Relu": 22, "GlobalAveragePool": 1, "Flatten": 1}
    assert dict(ops(torch_stage)) == expected
    assert dict(ops(tmp_path / "onnx_stage.onnx")) == expected
    assert report.after["params"] == 8_309_384  # exactly the deploy form's parameters


@pytest.mark.parametrize("name", ["acnet_resnet18", "dbb_resnet18", "mobileone_s0"])
def test_onnx_stage_alone_reaches_the_deploy_form(name, tmp_path):
    train = tmp_path / "train.onnx"
    export_onnx(load_artifact(name), train, verify=False)
    report = fuse_artifact(load_onnx_artifact(train), tmp_path / "fused.onnx", passes=["onnx_reparam"], samples=4)
    assert report.check.passed and report.check.worst().max_rel <= 1e-5
    fused = ops(tmp_path / "fused.onnx")
    assert fused["Conv"] == deploy_form_convs(name) < ops(train)["Conv"]
    assert fused["BatchNormalization"] == 0
    merged = report.passes[0]["sites"]
    assert len(merged) >= 16 and all("certified" in s["what"] for s in merged)  # ResNet-18: 16 blocks


def test_fuse_cli_json_and_bad_passes(cli, tmp_path):
    out = tmp_path / "f.onnx"
    result = cli("fuse", "tiny-mobilenet", "-o", out, "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["passed"] and report["before"]["params"] >= report["after"]["params"]
    assert [p["name"] for p in report["passes"]] == ["reparameterize", "onnx_reparam"]
    result = cli("fuse", "tiny-mobilenet", "-o", tmp_path / "g.onnx", "--passes", "onnx_reparam,reparameterize")
    assert result.exit_code == 2 and "before" in result.stderr
    result = cli("fuse", out, "-o", tmp_path / "g.onnx", "--passes", "fuse_conv_bn")
    assert result.exit_code == 2 and "PyTorch models" in result.stderr
    result = cli("fuse", "tiny-mobilenet", "-o", tmp_path / "g.onnx", "--passes", "prune")
    assert result.exit_code == 2 and "use `deploy prune" in result.stderr  # not exact: not a fuse pass
    assert not (tmp_path / "g.onnx").exists()


def test_fuse_that_fails_its_check_writes_nothing(cli, tmp_path):
    """A model whose traced graph differs from eager PyTorch: the fused file must not appear."""
    src = tmp_path / "branchy.py"
    src.write_text("import torch\nclass B(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.c = torch.nn.Conv2d(3, 3, 1)\n    def forward(self, x):\n"
                   "        return self.c(x) + 1 if float(x.abs().sum()) == 0 else self.c(x) * 2\n"
                   "def make():\n    return B()\n")
    out = tmp_path / "b.onnx"
    result = cli("fuse", f"{src}:make", "-o", out, "--shape", "1,3,8,8", "--data", "random")
    assert result.exit_code == 1 and "not written" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branchy.py"]


def _ill_conditioned_conv_bn(path):
    """Conv (bias 4000) → BatchNormalization (mean ≈ 4000, var 0.01): the fold cancels a large offset, so
    ONNX Runtime's own optimized and unoptimized runs of this file differ by ~6e-5."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 16

    def init(name, values):
        return numpy_helper.from_array(np.asarray(values, np.float32), name)

    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["bn1"], epsilon=1e-5, name="bn1"),
             helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["out"], pads=[1, 1, 1, 1], name="conv2")]
    weights = [init("w1", rng.standard_normal((c, 3, 3, 3)) * 0.5), init("b1", np.full(c, 4000.0)),
               init("g", np.ones(c)), init("be", np.zeros(c)), init("m", 4000.0 + rng.standard_normal(c) * 0.1),
               init("v", np.full(c, 1e-2)), init("w2", rng.standard_normal((8, c, 3, 3)) * 0.1)]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, 32, 32])]
    graph = helper.make_graph(nodes, "ill", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_to_onnx_is_judged_against_the_runtime_noise_floor(cli, tmp_path):
    original = _ill_conditioned_conv_bn(tmp_path / "ill.onnx")
    report = tmp_path / "fuse.json"
    result = cli("fuse", original, "-o", tmp_path / "fused.onnx", "--data", "random", "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    floor = data["check"]["outputs"][0]["reference_fp32_error"]
    assert 1e-5 < 2 * floor < 1e-3  # ONNX Runtime itself moves this file's outputs by more than 1e-5
    assert data["check"]["outputs"][0]["tolerance"]["max_rel"] == pytest.approx(2 * floor)
    assert any(n.startswith("noise floor: ONNX Runtime") for n in data["check"]["notes"])
    reparam = data["passes"][0]
    assert reparam["changed"] and any("bn1" in s["where"] or "BatchNormalization" in s["what"]
                                      for s in reparam["sites"])  # the fold is reported as a change
    # a candidate off by 3e-5: within the floor, so it passes; held to a fixed 1e-5 it fails
    model = onnx.load(str(tmp_path / "fused.onnx"))
    out = next(i for i in model.graph.initializer if i.name == model.graph.node[-1].input[1])
    values = onnx.numpy_helper.to_array(out).copy()
    values[0, 0, 1, 1] *= 1.0 + 3e-4
    out.CopyFrom(onnx.numpy_helper.from_array(values, out.name))
    onnx.save(model, str(tmp_path / "near.onnx"))
    near = cli("check", original, tmp_path / "near.onnx", "--data", "random", "--json", tmp_path / "near.json")
    worst = json.loads((tmp_path / "near.json").read_text())["outputs"][0]["max_rel"]
    assert 1e-5 < worst < 2 * floor and near.exit_code == 0, near.output
    assert cli("check", original, tmp_path / "near.onnx", "--data", "random", "--tol", "max_rel=1e-5").exit_code == 1


def test_fuse_tol_and_a_failed_proof_shows_its_table(cli, tmp_path):
    original = _ill_conditioned_conv_bn(tmp_path / "ill.onnx")
    result = cli("fuse", original, "-o", tmp_path / "fused.onnx", "--data", "random", "--tol", "max_rel=1e-12")
    assert result.exit_code == 1 and not (tmp_path / "fused.onnx").exists()
    assert "max rel" in result.output and "verdict" in result.output  # the comparison table, before the exit
    assert result.output.strip().splitlines()[-1].startswith("FAILED")
