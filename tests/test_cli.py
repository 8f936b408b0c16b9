"""The CLI end to end, in-process: help texts, check verdicts and exit codes, JSON reports."""

import json
import subprocess
import sys

import pytest

VERBS = ["zoo", "inspect", "export", "fuse", "quantize", "check", "bench", "backends", "demo", "digits", "build",
         "debug"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(cli, verb):
    result = cli(verb, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_check_own_export_passes_with_json(cli, tiny_onnx, tmp_path):
    report_path = tmp_path / "report.json"
    result = cli("check", "tiny-resnet", tiny_onnx, "--json", report_path)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED")
    report = json.loads(report_path.read_text())
    assert report["passed"] is True
    out = report["outputs"][0]
    assert out["max_rel"] <= 1e-5 and out["cosine"] > 0.999999 and out["top1"] == 1.0
    assert report["samples"] == 8 and "photos" in report["data"]


def test_check_different_models_fails(cli, tmp_path):
    report_path = tmp_path / "report.json"
    result = cli("check", "tiny-resnet", "tiny-convnet", "--json", report_path)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("FAILED")
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["outputs"][0]["max_rel"] > 0.1


def test_check_torch_model_on_onnx_runtime(cli):
    """A model spec asked to run on ort-cpu is exported on the fly; same numbers within fp32."""
    result = cli("check", "tiny-mobilenet", "tiny-mobilenet", "--backend-b", "ort-cpu", "--data", "random")
    assert result.exit_code == 0, result.output
    assert "ort-cpu" in result.output.strip().splitlines()[-1]


def test_check_tolerance_override_can_fail_an_equal_pair(cli, tiny_onnx):
    # demand an impossible SQNR: the same pair now fails, proving overrides reach the verdict
    result = cli("check", "tiny-resnet", tiny_onnx, "--tol", "min_sqnr_db=1000")
    assert result.exit_code == 1
    assert "sqnr" in result.output.strip().splitlines()[-1]


def test_check_fixed_batch_file_and_static_export(cli, tmp_path):
    path = tmp_path / "static.onnx"
    result = cli("export", "tiny-convnet", "-o", path, "--static", "--shape", "2,3,32,32")
    assert result.exit_code == 0, result.output
    result = cli("check", "tiny-convnet", path, "--samples", "5", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["samples"] == 6  # rounded up to whole batches of 2


def test_unavailable_backend_exits_3(cli, tiny_onnx):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: torch-cuda is available")
    result = cli("check", "tiny-resnet", "tiny-resnet", "--backend-b", "torch-cuda")
    assert result.exit_code == 3
    assert "torch-cuda unavailable" in result.stderr


def test_unknown_backend_exits_2(cli):
    result = cli("check", "tiny-resnet", "tiny-resnet", "--backend-b", "tensorflow")
    assert result.exit_code == 2
    assert "unknown backend" in result.stderr


def test_backends_lists_reasons(cli, tmp_path):
    result = cli("backends", "--json", tmp_path / "b.json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "b.json").read_text())}
    assert rows["torch-cpu"]["available"] and rows["ort-cpu"]["available"] and rows["ov-cpu"]["available"]
    assert set(rows) == {"torch-cpu", "ort-cpu", "ov-cpu", "ov-cpu-bf16", "torch-cuda", "ort-cuda", "trt"}
    assert "openvino 20" in rows["ov-cpu"]["detail"] and "CPU: " in rows["ov-cpu"]["detail"]
    for row in rows.values():
        assert row["detail"]  # a version when available, a reason when not


def test_zoo_json(cli, tmp_path):
    result = cli("zoo", "resnet*", "--json", tmp_path / "zoo.json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "zoo.json").read_text())}
    assert set(rows) == {"resnet18", "resnet34", "resnet50"}
    assert rows["resnet50"]["params"] == 25_557_032
    # torchvision quotes 4.09 GMACs for ResNet-50: 8.18 GFLOPs at 2 FLOPs per MAC
    assert rows["resnet50"]["gflops"] == pytest.approx(8.18, abs=0.02)


def test_entry_point_runs_as_a_program():
    """The installed `deploy` script, as users and CI call it."""
    done = subprocess.run([sys.executable, "-m", "deploy.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "export" in done.stdout


def test_inspect_json_for_model_and_onnx(cli, tiny_onnx, tmp_path):
    for target in ("tiny-resnet", tiny_onnx):
        path = tmp_path / "inspect.json"
        result = cli("inspect", target, "--json", path)
        assert result.exit_code == 0, result.output
        report = json.loads(path.read_text())
        assert report["flops"] > 0 and report["params"] > 0 and report["layers"]
        assert any(layer["op"] in ("Conv", "Conv2d") and layer["flops"] > 0 for layer in report["layers"])


def test_dynamo_exporter_writes_one_verified_file(cli, tmp_path):
    out = tmp_path / "dyn.onnx"
    result = cli("export", "tiny-resnet", "-o", out, "--exporter", "dynamo", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["exporter"] == "dynamo" and report["passed"] and report["check"]["outputs"][0]["max_rel"] <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dyn.onnx", "e.json"]  # no .onnx.data beside it
    assert not report["external_data"]


def test_nested_outputs_are_all_compared(cli, tmp_path):
    """A detector-style (logits, [boxes]) output: a change in the nested tensor must fail the check."""
    src = tmp_path / "nest.py"
    src.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, k):\n"
        "        super().__init__()\n"
        "        self.c, self.d, self.k = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 2, 1), k\n"
        "    def forward(self, x):\n"
        "        return self.c(x), [self.d(x) * self.k]\n"
        "def good():\n    return Net(1.0)\n"
        "def broken():\n    return Net(3.0)\n")
    result = cli("check", f"{src}:good", f"{src}:broken", "--shape", "1,3,8,8")
    assert result.exit_code == 1 and "output_1" in result.output.strip().splitlines()[-1]
    out = tmp_path / "nest.onnx"
    result = cli("export", f"{src}:good", "-o", out, "--shape", "1,3,8,8")
    assert result.exit_code == 0, result.output
    assert "2 output(s)" in result.output.strip().splitlines()[-1]


def test_shape_on_a_dynamic_batch_file_keeps_the_batch_free(cli, tiny_onnx, tmp_path):
    result = cli("check", "tiny-resnet", tiny_onnx, "--shape", "1,3,32,32", "--samples", "8", "--run-batch", "4")
    assert result.exit_code == 0, result.output
