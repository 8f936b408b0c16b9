"""The ov-cpu backend: OpenVINO's CPU plugin runs our ONNX files — fp32 files computing what they say (not bf16),
our int8 Q/DQ files on its int8 kernels — through the same runner contract, check and bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deploy
from deploy.backends import backend_status, get_runner_class
from deploy.ov import capabilities

pytest.importorskip("openvino", reason="openvino is pinned in requirements.lock; this venv lacks it")


def test_ov_cpu_is_listed_and_available():
    status = {s.name: s for s in backend_status()}
    assert status["ov-cpu"].available, status["ov-cpu"].detail
    assert status["ov-cpu"].runs == "onnx" and status["ov-cpu"].detail.startswith("openvino ")


def test_an_fp32_file_computes_in_fp32_on_ov_cpu(cli, tiny_onnx):
    """Equal to ONNX Runtime within deploy check's fp32 preset (max rel 1e-5): the plugin's bf16 default is off."""
    result = cli("check", tiny_onnx, tiny_onnx, "--backend-b", "ov-cpu", "--samples", "4")
    assert result.exit_code == 0, result.output
    assert "(ov-cpu)" in result.output and result.output.strip().splitlines()[-1].startswith("PASSED")


def test_dynamic_batch_and_named_outputs(tiny_onnx):
    artifact = deploy.api.load(str(tiny_onnx))
    rng = np.random.default_rng(0)
    with get_runner_class("ov-cpu")(artifact, threads=1) as ov, get_runner_class("ort-cpu")(artifact, threads=1) as ort:
        for batch in (1, 3):
            feeds = {artifact.inputs[0].name: rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
            a, b = ort.infer(feeds), ov.infer(feeds)
            assert list(a) == list(b)
            for name in a:
                assert b[name].shape == a[name].shape
                assert np.abs(b[name] - a[name]).max() <= 1e-5 * np.abs(a[name]).max()


def test_our_int8_file_runs_and_is_judged_on_ov_cpu(cli, tiny_onnx, tmp_path):
    int8 = tmp_path / "t.int8.onnx"
    done = cli("quantize", tiny_onnx, "-o", int8, "--samples", "32", "--eval-samples", "16", "--allow-poor")
    assert done.exit_code == 0 and int8.is_file(), done.output
    checked = deploy.check(str(tiny_onnx), str(int8), backend_b="ov-cpu", precision="int8", samples=8)
    assert checked.backend_candidate == "ov-cpu" and checked.worst().cosine > 0.9
    report = tmp_path / "bench.json"
    timed = cli("bench", tiny_onnx, int8, "--backend", "ort-cpu,ov-cpu", "--min-time", "0.2", "--min-runs", "5",
                "--memory", "off", "--json", report)
    assert timed.exit_code == 0, timed.output
    labels = [r["label"] for r in json.loads(report.read_text())["results"]]
    assert len(labels) == 4 and sum("@ ov-cpu" in label for label in labels) == 2


def test_the_pipeline_chooses_per_cpu_runtime_and_verify_times_both(cli, tmp_path):
    """ort-cpu and ov-cpu side by side: an int8 file made for each runtime (the OpenVINO one certified as OpenVINO
    runs it), both int8 files timed on both runtimes, a choice for each; verify re-runs all of it."""
    out = tmp_path / "pipe"
    done = cli("pipeline", "tiny-resnet", "-o", out, "--backend", "ort-cpu,ov-cpu", "--max-drop", "10",
               "--prune-latency", "none", "--samples", "32", "--eval-samples", "16", "--min-time", "0.3")
    assert done.exit_code == 0, done.output
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["choices"]) == {"ort-cpu", "ov-cpu"}
    for backend in ("ort-cpu", "ov-cpu"):
        results = m["latency"][backend]["results"]
        assert {"fp32", "fused", "int8-ort-cpu", "int8-ov-cpu"} <= set(results), results
        assert results["fp32"]["ratio"] == 1.0
    by_name = {c["name"]: c for c in m["candidates"]}
    for name, target in (("int8-ort-cpu", "ort-cpu"), ("int8-ov-cpu", "ov-cpu")):
        c = by_name[name]
        assert c["built"] and c["details"]["target"] == target and {"ort-cpu", "ov-cpu"} <= set(c["backends"])
    assert by_name["int8-ov-cpu"]["details"]["certified_on"] == "ov-cpu"
    assert "certified_on" not in by_name["int8-ort-cpu"]["details"]
    bf16 = by_name["bf16"]  # the fused file under OpenVINO's bf16 hint, where the CPU has bf16
    if "BF16" in capabilities():
        assert bf16["built"] and bf16["backends"] == ["ov-cpu"] and bf16["file"] == by_name["fused"]["file"]
        assert bf16["details"]["certified_on"] == "ov-cpu-bf16" and bf16["certificate"]["centred_sqnr_db"] < 80
        assert "bf16" in m["latency"]["ov-cpu"]["results"] and "bf16" not in m["latency"]["ort-cpu"]["results"]
    else:
        assert not bf16["built"] and "lacks bf16" in bf16["why_not"]
    assert m["versions"]["openvino"]
    page = (out / "report.html").read_text()
    assert "ov-cpu" in page and "ort-cpu" in page
    proof = cli("verify", out / "manifest.json", "--min-time", "0.2", "--max-slowdown", "1.0", "--all")
    assert proof.exit_code == 0, proof.output
    assert "ov-cpu" in proof.output


def test_an_openvino_ir_is_exported_checked_and_run(cli, tmp_path):
    """`deploy export --format openvino`: the IR is OpenVINO's reading of the proven ONNX file, equal to it on ov-cpu,
    hashed; check and bench run it on ov-cpu; the verbs that rewrite models refuse it; a wrong -o writes nothing."""
    from deploy.artifacts.files import sha256_file

    xml, report = tmp_path / "t.xml", tmp_path / "t.json"
    done = cli("export", "tiny-resnet", "-o", xml, "--json", report)
    assert done.exit_code == 0, done.output
    assert done.output.strip().splitlines()[-1].startswith("PASSED")
    ir = json.loads(report.read_text())["openvino"]
    assert ir["check"]["passed"] and ir["check"]["outputs"][0]["max_rel"] <= 1e-5
    assert ir["sha256"] == {"xml": sha256_file(xml), "bin": sha256_file(xml.with_suffix(".bin"))}
    checked = deploy.check("tiny-resnet", str(xml), samples=4)
    assert checked.passed and checked.backend_candidate == "ov-cpu"
    timed = deploy.bench(str(xml), backend="ort-cpu,ov-cpu", min_time=0.1, min_runs=3, memory="off")
    assert [r.backend for r in timed.results] == ["ov-cpu"]
    refused = cli("quantize", xml, "-o", tmp_path / "q.onnx")
    assert refused.exit_code == 2 and "final artifact" in refused.stderr
    wrong = cli("export", "tiny-resnet", "-o", tmp_path / "x.onnx", "--format", "openvino")
    assert wrong.exit_code == 2 and "NAME.xml" in wrong.stderr and not list(tmp_path.glob("x.*"))


def test_quantize_for_ov_cpu_is_judged_and_timed_on_openvino(tiny_onnx, tmp_path):
    """--target ov-cpu: uint8 activations and float bias, scored and timed on OpenVINO's CPU plugin, whose compiled
    graph runs every conv on integers; the file passes deploy check's int8 preset on ov-cpu and on ort-cpu."""
    import onnx

    out = tmp_path / "t.ov.onnx"
    report = deploy.quantize(str(tiny_onnx), out, target="ov-cpu", samples=32, eval_samples=16, allow_poor=True)
    assert out.is_file() and report.target == "ov-cpu"
    kernels = report.integer_kernels
    assert kernels["runtime"] == "ov-cpu" and kernels["int8 convolutions"] > 0 and kernels["float convolutions"] == 0
    assert report.latency["runtime"] == "ov-cpu" and report.latency["int8_ms"] > 0
    model = onnx.load(str(out))
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zero_points = {i.name: i for i in model.graph.initializer}
    assert q and all(zero_points[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in q)
    int32 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32]
    assert not int32, "ov-cpu keeps the bias in float"
    for backend in ("ov-cpu", "ort-cpu"):
        checked = deploy.check(str(tiny_onnx), str(out), backend_b=backend, precision="int8", samples=8)
        assert checked.passed == (not report.preset_failures), checked.summary()


def test_debug_reads_intermediate_tensors_on_ov_cpu(tiny_onnx, tmp_path):
    out = tmp_path / "t.int8.onnx"
    deploy.quantize(str(tiny_onnx), out, samples=32, eval_samples=16, allow_poor=True)
    report = deploy.debug(str(tiny_onnx), str(out), backend_b="ov-cpu", precision="int8", samples=4)
    assert report.backend_candidate == "ov-cpu" and len(report.layers) >= 5
    assert all(np.isfinite(e.local.cosine) for e in report.layers)
    assert "OpenVINO" in report.perturbation["note"]


def test_bf16_is_a_precision_to_choose_never_a_default():
    """ov-cpu-bf16 computes float layers in bf16 where the CPU has it: an fp32 file then misses the fp32 preset, at
    bf16's ~40 dB; ov-cpu stays within fp32's. Without bf16 the backend says the CPU lacks it."""
    ok, detail = get_runner_class("ov-cpu-bf16").available()
    if "BF16" not in capabilities():
        assert not ok and "lacks bf16" in detail
        return
    assert ok
    exact = deploy.check("resnet18", "resnet18", backend_a="ort-cpu", backend_b="ov-cpu", samples=4)
    assert exact.passed, exact.summary()
    strict = deploy.check("resnet18", "resnet18", backend_a="ort-cpu", backend_b="ov-cpu-bf16", samples=4)
    assert not strict.passed and strict.worst().max_rel > 1e-4
    # bf16 keeps 8 mantissa bits: about 40 dB on a whole output (the bf16 preset also asks 20 dB of every class
    # channel, which seeded resnet18's near-flat logits meet or miss by the sample: the verdict is not asserted)
    worst = strict.worst()
    assert worst.sqnr_db >= 40.0 and worst.cosine >= 0.9999, strict.summary()


def test_a_real_paddle_model_on_both_cpu_runtimes(cli, ppocr_models, tmp_path):
    """PaddleOCR's trained cls (another exporter's opset-11 file): OpenVINO's int8 file is made for what OpenVINO
    compiles (no quantized constant on the head's bias Add, which crashes its low-precision transformations), and
    ONNX Runtime's int8 file is timed on OpenVINO only where OpenVINO compiles it — else the report says why, and
    the model's pipeline still passes."""
    out = tmp_path / "results"
    done = cli("demo", "--models", "ppocr-cls", "--backend", "ort-cpu,ov-cpu", "--out", out, "--samples", "32",
               "--eval-samples", "16", "--min-time", "0.3")
    assert done.exit_code == 0, done.output + done.stderr
    m = json.loads((out / "ppocr-cls" / "manifest.json").read_text())
    by_name = {c["name"]: c for c in m["candidates"]}
    ov_int8, ort_int8 = by_name["int8-ov-cpu"], by_name["int8-ort-cpu"]
    assert ov_int8["built"] and "ov-cpu" in ov_int8["backends"], ov_int8["why_not"]
    assert "int8-ov-cpu" in m["latency"]["ov-cpu"]["results"]
    if "ov-cpu" not in ort_int8["backends"]:
        assert "OpenVINO cannot compile it" in ort_int8["details"]["not_timed"]["ov-cpu"]
        assert "int8-ort-cpu" not in m["latency"]["ov-cpu"]["results"]
    assert set(m["choices"]) == {"ort-cpu", "ov-cpu"}
    # debug on OpenVINO over several runs: Paddle's shape tensors (int64 Reshape targets) are recomputed, not fed
    folder = out / "ppocr-cls"
    found = deploy.debug(str(folder / "fp32.onnx"), str(folder / by_name["int8-ov-cpu"]["file"]), backend_b="ov-cpu",
                         precision="int8", data=str(tmp_path / "results" / "data" / "ocr-cls-eval.npz"), samples=16,
                         run_batch=4, impact=0, shape=(1, 3, 48, 192))
    assert found.backend_candidate == "ov-cpu" and len(found.layers) > 20
    assert all(np.isfinite(e.local.sqnr_db) for e in found.layers if e.op == "Conv")
