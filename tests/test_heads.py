"""Heads that trip deployment tools up (tests/fixtures/heads.py), through every verb as a stranger would."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "heads.py"
SHAPE = ("--shape", "1,3,64,64")


@pytest.fixture(scope="module", params=["yolo", "textmap"])
def head(request, cli, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    spec = f"{FIXTURES}:{request.param}"
    path = folder / f"{request.param}.onnx"
    result = cli("export", spec, "-o", path, *SHAPE)
    assert result.exit_code == 0, result.output
    return request.param, spec, path, folder


def test_inspect_counts_the_same_flops_as_the_module(cli, head):
    _, spec, path, _ = head
    torch_line = cli("inspect", spec, *SHAPE, "--no-layers").output.splitlines()[-1]
    onnx_line = cli("inspect", path, "--no-layers").output.splitlines()[-1]
    gflops = lambda line: line.split(", ")[1]  # noqa: E731
    assert gflops(torch_line) == gflops(onnx_line) and "0.000 GFLOPs" not in onnx_line


def test_check_fuse_and_both_precisions_pass(cli, head):
    name, spec, path, folder = head
    assert cli("check", spec, path, *SHAPE).exit_code == 0
    assert cli("fuse", path, "-o", folder / "fused.onnx").exit_code == 0
    preprocess = ("--preprocess", "unit", "--resize", "letterbox")  # a detector's x/255 and letterbox
    result = cli("quantize", path, "-o", folder / "int8.onnx", *preprocess, "--json", folder / "int8.json")
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "int8.json").read_text())
    assert report["preset_failures"] == [] and "unit letterbox" in report["calib"]
    if name == "textmap":  # no integer ConvTranspose on ONNX Runtime CPU: kept float, and said so
        assert "in float: 2 ConvTranspose" in result.output
    result = cli("quantize", path, "-o", folder / "fp16.onnx", "--precision", "fp16")
    assert result.exit_code == 0, result.output
    assert cli("check", path, folder / "int8.onnx", "--precision", "int8").exit_code == 0
    assert cli("check", path, folder / "fp16.onnx", "--precision", "fp16").exit_code == 0


def test_an_int8_with_dead_score_channels_fails_the_int8_preset(cli, tmp_path):
    path = tmp_path / "yolo.onnx"
    assert cli("export", f"{FIXTURES}:yolo", "-o", path, *SHAPE).exit_code == 0
    result = cli("quantize", path, "-o", tmp_path / "ours.onnx", "--samples", "32", "--eval-samples", "16")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(tmp_path / "ours.onnx"))  # what a collapsed calibration does: scores flat at 0
    score = next(n for n in reversed(model.graph.node) if n.op_type == "Sigmoid")
    zero = onnx.numpy_helper.from_array(np.zeros((), np.float32), "zero_score")
    model.graph.initializer.append(zero)
    score.op_type, score.input[:] = "Mul", [score.input[0], "zero_score"]
    onnx.save(model, str(tmp_path / "dead.onnx"))
    result = cli("check", path, tmp_path / "dead.onnx", "--precision", "int8", "--json", tmp_path / "dead.json")
    assert result.exit_code == 1
    out = json.loads((tmp_path / "dead.json").read_text())["outputs"][0]
    assert out["cosine"] > 0.99  # the whole output's cosine still passes: boxes dominate its energy
    assert out["worst_channel"] >= 4 and any("channel" in f for f in out["failures"])
    assert cli("check", path, tmp_path / "ours.onnx", "--precision", "int8").exit_code == 0
