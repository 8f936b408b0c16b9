"""deploy pipeline and deploy verify, end to end through the CLI on real exports, sessions and timings."""

from __future__ import annotations

import importlib.util
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "deploy" / "pipelines" / "manifest.schema.json").read_text())
_spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "scripts" / "report_screenshot.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)

FAST = ["--samples", "32", "--eval-samples", "16", "--min-time", "0.3"]


@pytest.fixture(scope="module")
def tiny_run(cli, tmp_path_factory):
    """tiny-resnet through the whole pipeline, one pruning target, photos. Timed at batch 32, as the demo times
    digits-resnet: this net's fixed costs are most of its latency at small batches, and whether pruning reached
    0.8× there turned on the machine's noise (fresh-clone runs measured 0.845× at batch 1 and at batch 8)."""
    out = tmp_path_factory.mktemp("pipe") / "tiny"
    result = cli("pipeline", "tiny-resnet", "-o", out, "--backend", "ort-cpu", "--max-drop", "10",
                 "--prune-latency", "0.8", "--timing-batch", "32", *FAST, "--json", out.parent / "run.json")
    assert result.exit_code == 0, result.output + result.stderr
    return out, result


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_pipeline_writes_certified_candidates_and_a_valid_manifest(tiny_run):
    out, result = tiny_run
    m = _manifest(out)
    jsonschema.Draft202012Validator(SCHEMA).validate(m)
    by = {c["name"]: c for c in m["candidates"]}
    assert list(by) == ["fp32", "fused", "fp16", "int8", "pruned-0.8", "pruned-0.8+int8"]
    assert not by["fp16"]["built"] and "float32" in by["fp16"]["why_not"]  # ort-cpu has no float16 kernels
    fp32, fused, int8 = by["fp32"]["certificate"], by["fused"]["certificate"], by["int8"]["certificate"]
    assert fp32["agreement"] == 100.0 and fp32["drop"] == 0.0 and fp32["max_rel"] == 0.0
    assert fused["max_rel"] < 1e-5 and fused["agreement"] == 100.0  # exact passes stay exact
    assert 0 < int8["centred_sqnr_db"] < 80 and int8["samples"] == 16
    assert any("QLinearConv" in line for line in by["int8"]["changes"])
    assert by["pruned-0.8"]["details"]["macs_kept"] < 1.0 and by["pruned-0.8+int8"]["parent"] == "pruned-0.8"
    for c in by.values():
        if c["built"]:
            from deploy.artifacts.files import sha256_file

            assert sha256_file(out / c["file"]) == c["sha256"]
    choice = m["choices"]["ort-cpu"]
    chosen = by[choice["chosen"]]
    assert chosen["within_budget"] and chosen["certificate"]["drop"] <= 10
    results = m["latency"]["ort-cpu"]["results"]
    assert results["fp32"]["ratio"] == 1.0 and set(results) == {n for n, c in by.items() if c["built"]}

    def may_ship(n: str) -> bool:  # within budget; int8/fp16 only when faster than fp32 beyond the noise
        return by[n]["within_budget"] and (by[n]["precision"] == "fp32" or results[n]["high"] < 1.0)

    faster = [n for n, r in results.items() if r["ratio"] < results[choice["chosen"]]["ratio"]]
    assert may_ship(choice["chosen"]) and not any(may_ship(n) for n in faster), \
        "a faster candidate within budget was passed over"
    assert choice["chosen"] in choice["pareto_front"] or by[choice["chosen"]]["precision"] == "fp32"
    assert m["versions"]["onnxruntime"] and m["versions"]["torch"] and m["data"]["held_out"]["offset"] == 32
    assert "PASSED pipeline tiny-resnet" in result.output and "chosen" in result.output


def test_report_is_one_self_contained_page(tiny_run):
    out, _ = tiny_run
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 1 and "<script" not in page and "src=" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    for name in ("fp32", "fused", "int8", "pruned-0.8+int8", "Pareto front", "budget", "chosen"):
        assert name in page
    assert ".tiny." not in page  # the temporary work folder's name never leaks into the page


@pytest.mark.skipif(shots.find_browser() is None, reason="no Chromium here (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    from PIL import Image

    out, _ = tiny_run
    png = shots.screenshot(out / "report.html", tmp_path / "report.png", 1280, 1400)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 1400)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, chart and table drawn, not a blank page
    green = sum(n for n, (r, g, b) in colours if g > 200 and r < 240 and b < 240 and g - r > 10)
    assert green > 500  # the chosen row's green band is there


def _copy(out: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(out, dest)
    return dest


def test_verify_passes_fresh_and_writes_junit(cli, tiny_run, tmp_path):
    folder = _copy(tiny_run[0], tmp_path)
    junit = tmp_path / "verify.xml"
    result = cli("verify", folder / "manifest.json", "--junit", junit, "--min-time", "0.3", "--all",
                 "--max-slowdown", "1.0")
    assert result.exit_code == 0, result.output + result.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0"
    kinds = [c.get("classname") for c in suite.iter("testcase")]
    assert kinds.count("verify.sha256") == 5 and kinds.count("verify.certificate") == 5
    assert kinds.count("verify.latency") == 4  # every candidate but the baseline, --all


def test_verify_fails_a_perturbed_artifact(cli, tiny_run, tmp_path):
    folder = _copy(tiny_run[0], tmp_path)
    model = onnx.load(str(folder / "fused.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # weights nudged by 30 %: same graph, other numbers
        w = numpy_helper.to_array(init)
        if w.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array((w * (1 + 0.3 * rng.standard_normal(w.shape))).astype(w.dtype),
                                                  init.name))
    onnx.save(model, str(folder / "fused.onnx"))
    junit = tmp_path / "v.xml"
    result = cli("verify", folder, "--no-latency", "--junit", junit)
    assert result.exit_code == 1, result.output
    failed = {(c.get("classname"), c.get("name")): c.find("failure").get("message")
              for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None}
    assert set(failed) == {("verify.sha256", "fused"), ("verify.certificate", "fused")}
    assert "recorded" in failed[("verify.certificate", "fused")]
    assert "FAILED verify" in result.output


def test_verify_fails_an_unreachable_latency(cli, tiny_run, tmp_path):
    folder = _copy(tiny_run[0], tmp_path)
    m = _manifest(folder)
    m["latency"]["ort-cpu"]["results"]["int8"]["ratio"] = 0.01  # 100× faster than fp32: not on this machine
    (folder / "manifest.json").write_text(json.dumps(m))
    result = cli("verify", folder / "manifest.json", "--all", "--min-time", "0.3", "--json", tmp_path / "v.json")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    failed = [c for c in report["cases"] if c["status"] == "failed"]
    assert [(c["kind"], c["name"]) for c in failed] == [("latency", "ort-cpu:int8")]
    assert failed[0]["figures"]["low"] > failed[0]["figures"]["limit"] == pytest.approx(0.0115)


def test_verify_refuses_what_is_not_a_manifest(cli, tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"format": "deploy.manifest/1", "candidates": []}))
    result = cli("verify", bad)
    assert result.exit_code == 2 and "not a deploy manifest" in result.stderr
    assert cli("verify", tmp_path / "nothing.json").exit_code == 2


def test_pipeline_bad_input_is_refused_before_any_work(cli, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    result = cli("pipeline", "tiny-resnet", "-o", tmp_path / "busy", *FAST)
    assert result.exit_code == 2 and "holds other files" in result.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    result = cli("pipeline", "tiny-resnet", "-o", tmp_path / "o", "--backend", "torch-cpu")
    assert result.exit_code == 2 and "ort-cpu, ov-cpu, ort-cuda, trt" in result.stderr
    result = cli("pipeline", "tiny-resnet", "-o", tmp_path / "o", "--prune-latency", "1.5")
    assert result.exit_code == 2 and "between 0 and 1" in result.stderr
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_pipeline_on_an_onnx_file_with_labelled_digits(cli, trained, tmp_path):
    """A user's ONNX file and labelled arrays: accuracy certificates; no pruned candidates (no PyTorch)."""
    from safetensors.torch import save_file

    from deploy.jobs.digits import digits_splits, write_digits_npz

    weights = tmp_path / "digits.safetensors"
    save_file({k: v.contiguous() for k, v in trained["digits-resnet"].model.state_dict().items()}, str(weights))
    onnx_path = tmp_path / "digits.onnx"
    assert cli("export", "digits-resnet", "-w", weights, "-o", onnx_path).exit_code == 0
    splits = digits_splits()
    calib = write_digits_npz(tmp_path / "calib.npz", splits.calib)
    test = write_digits_npz(tmp_path / "test.npz", splits.test)
    out = tmp_path / "d"
    result = cli("pipeline", onnx_path, "-o", out, "--data", calib, "--eval", test, "--samples", "64",
                 "--eval-samples", "200", "--max-drop", "1.0", "--min-time", "0.3")
    assert result.exit_code == 0, result.output + result.stderr
    m = _manifest(out)
    by = {c["name"]: c for c in m["candidates"]}
    assert list(by) == ["fp32", "fused", "fp16", "int8", "pruned-0.7", "pruned-0.5"]
    assert m["budget"]["metric"] == "accuracy"
    assert not by["pruned-0.5"]["built"] and "needs the PyTorch model" in by["pruned-0.5"]["why_not"]
    assert by["fp32"]["certificate"]["accuracy"] > 95 and by["int8"]["certificate"]["accuracy"] > 95
    assert m["data"]["held_out"]["labels"] and m["data"]["held_out"]["offset"] == 0
    assert any("PyTorch model" in n for n in m["notes"])
    chosen = by[m["choices"]["ort-cpu"]["chosen"]]
    assert chosen["within_budget"] and chosen["certificate"]["drop"] <= 1.0


def test_an_earlier_pipeline_folder_is_replaced_whole(tmp_path):
    from deploy.pipelines.run import _move_into_place, check_folder

    old = tmp_path / "out"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    (old / "stale.onnx").write_text("x")
    check_folder(old)  # an earlier pipeline's folder is accepted
    work = tmp_path / ".out.work"
    work.mkdir()
    (work / "manifest.json").write_text('{"new": true}')
    _move_into_place(work, old)
    assert sorted(p.name for p in old.iterdir()) == ["manifest.json"] and "new" in (old / "manifest.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_top1_budget_on_a_map_output_is_refused_before_candidates(cli, tmp_path):
    """A text-map head (N, 1, H, W) has no top-1: --max-drop (or the default budget) would put fp32 itself over
    budget. The pipeline says which budget fits, right after the export, and leaves no folder."""
    model = f"{ROOT / 'tests' / 'fixtures' / 'heads.py'}:textmap"
    for budget in (["--max-drop", "1"], []):
        result = cli("pipeline", model, "--shape", "1,3,64,64", "-o", tmp_path / "o", *budget, *FAST)
        assert result.exit_code == 2, result.output
        assert "needs a classifier output" in result.stderr and "--min-sqnr" in result.stderr
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_an_onnx_file_with_free_height_and_width_gets_every_candidate(cli, tmp_path):
    """Exported with dynamic height and width, given --shape: int8 is built and every candidate timed there."""
    path = tmp_path / "dyn.onnx"
    assert cli("export", "tiny-resnet", "-o", path, "--dynamic", "batch,height,width").exit_code == 0
    out = tmp_path / "p"
    result = cli("pipeline", path, "--shape", "1,3,32,32", "-o", out, "--max-drop", "100", *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    manifest = _manifest(out)
    int8 = next(c for c in manifest["candidates"] if c["name"] == "int8")
    assert int8["built"], int8["why_not"]
    assert set(manifest["latency"]["ort-cpu"]["results"]) >= {"fp32", "fused", "int8"}
