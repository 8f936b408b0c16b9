"""`deploy bench` end to end on small models: the report's layout, same-artifact ratios, bad input."""

import csv
import io
import json

import pytest
import torch
from PIL import Image

QUICK = ["--min-runs", "10", "--min-time", "0.3", "--warmup", "5"]


@pytest.fixture(scope="module")
def bench_report(cli, tiny_onnx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    files = {k: folder / f"out.{k}" for k in ("json", "csv", "md", "png")}
    result = cli("bench", "tiny-resnet", tiny_onnx, "--backend", "torch-cpu,ort-cpu", "--batch", "1,2", *QUICK,
                 "--json", files["json"], "--csv", files["csv"], "--md", files["md"], "--plot", files["png"])
    assert result.exit_code == 0, result.output
    return result, files


def test_json_holds_every_artifact_backend_batch_with_stats_and_ratios(bench_report, tiny_onnx):
    _, files = bench_report
    report = json.loads(files["json"].read_text())
    keys = {(r["artifact"], r["backend"], r["batch"]) for r in report["results"]}
    # the model on both backends (exported for ONNX Runtime), the file on ONNX Runtime only
    expected = {(a, b, n) for n in (1, 2) for a, b in
                [("tiny-resnet", "torch-cpu"), ("tiny-resnet", "ort-cpu"), (str(tiny_onnx), "ort-cpu")]}
    assert keys == expected
    for r in report["results"]:
        lat = r["latency_ms"]
        assert lat["n"] >= 10 and len(r["times_ms"]) == lat["n"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["throughput_per_s"] == pytest.approx(r["batch"] / (lat["median"] / 1e3))
        if r["backend"] == "torch-cpu":
            assert r["ratio_to_baseline"] is None  # the first entry of each batch is the baseline
        else:
            ratio = r["ratio_to_baseline"]
            assert ratio["low"] <= ratio["ratio"] <= ratio["high"] and ratio["rounds"] == lat["n"]
            assert r["baseline"] == "tiny-resnet @ torch-cpu"
    env = report["environment"]
    assert env["cpu"]["model"] and env["threads"] >= 1 and "onnxruntime" in env["libraries"]
    assert report["config"]["ort_spinning"] is False and report["config"]["batches"] == [1, 2]
    assert any("skipped on torch-cpu" in n for n in report["notes"])


def test_csv_md_and_chart(bench_report):
    result, files = bench_report
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert len(rows) == 6 and float(rows[0]["median_ms"]) > 0
    assert files["md"].read_text().count("| tiny-resnet |") == 4
    with Image.open(files["png"]) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 300
    assert "ratio [95% CI]" in result.output
    assert "faster" in result.output or "slower" in result.output


def test_same_artifact_twice_gives_a_ratio_near_one(cli, tiny_onnx, tmp_path):
    path = tmp_path / "same.json"
    result = cli("bench", tiny_onnx, tiny_onnx, "--backend", "ort-cpu", "--min-time", "2", "--json", path)
    assert result.exit_code == 0, result.output
    second = json.loads(path.read_text())["results"][1]
    assert second["label"].endswith("#2")
    assert 0.9 <= second["ratio_to_baseline"]["ratio"] <= 1.1


def test_per_artifact_groups(cli, tiny_onnx, tmp_path):
    path = tmp_path / "groups.json"
    result = cli("bench", "tiny-resnet", "tiny-convnet", "--backend", "torch-cpu,ort-cpu", "--per-artifact",
                 *QUICK, "--json", path)
    assert result.exit_code == 0, result.output
    results = json.loads(path.read_text())["results"]
    baselines = {r["label"]: r["baseline"] for r in results}
    assert baselines["tiny-convnet @ ort-cpu"] == "tiny-convnet @ torch-cpu"
    assert baselines["tiny-resnet @ ort-cpu"] == "tiny-resnet @ torch-cpu"


@pytest.mark.parametrize("args,code,needle", [
    (["--backend", "tensorflow"], 2, "unknown backend"),
    (["--batch", "1,x"], 2, "--batch"),
    (["--batch", "0"], 2, "--batch"),
    (["--warmup", "soon"], 2, "--warmup"),
])
def test_bad_options(cli, args, code, needle):
    result = cli("bench", "tiny-resnet", *args)
    assert result.exit_code == code
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unavailable_backend_exits_3(cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: torch-cuda is available")
    result = cli("bench", "tiny-resnet", "--backend", "torch-cuda")
    assert result.exit_code == 3
    assert "torch-cuda unavailable" in result.stderr and "CPU-only" in result.stderr


def test_onnx_file_on_torch_backend_only(cli, tiny_onnx):
    result = cli("bench", tiny_onnx, "--backend", "torch-cpu")
    assert result.exit_code == 2 and "no artifact can run" in result.stderr


def test_fixed_batch_file_skips_other_batches(cli, tmp_path):
    static = tmp_path / "static.onnx"
    assert cli("export", "tiny-convnet", "-o", static, "--static", "--no-verify").exit_code == 0
    path = tmp_path / "fixed.json"
    result = cli("bench", static, "--batch", "1,4", *QUICK, "--json", path)
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert [r["batch"] for r in report["results"]] == [1]
    assert any("fixed" in n for n in report["notes"])
