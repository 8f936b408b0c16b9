"""The main job: `make demo`'s exact command line, the demo's pipelines and index page, FAILED rows for models
that cannot run, exit 4 for a bug, and the real trained PaddleOCR classifier with its labelled text crops."""

from __future__ import annotations

import html
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from deploy.artifacts import ppocr

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--samples", "32", "--eval-samples", "16", "--min-time", "0.3"]
BROKEN = str(ROOT / "tests" / "fixtures" / "broken.py") + ":spectral"


def makefile_demo_command() -> list[str]:
    """The demo recipe of the Makefile, as `make demo` runs it (variables at their defaults)."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "no demo target in the Makefile"
    lines = [line.strip() for line in recipe.group(1).splitlines()]
    (command,) = [line for line in lines if "deploy demo" in line]
    defaults = dict(re.findall(r"^(\w+)[ \t]*\?=[ \t]*(.*)$", text, re.M))
    command = re.sub(r"\$\((\w+)\)", lambda m: defaults.get(m.group(1), ""), command)
    args = shlex.split(command)
    assert Path(args[0]).name == "deploy" and args[1] == "demo", args
    return args[2:]


def test_the_makefile_demo_command_line_is_ready(cli, ppocr_models, tmp_path, monkeypatch):
    args = makefile_demo_command()
    assert args[:2] == ["--out", "results"]
    monkeypatch.chdir(tmp_path)
    result = cli("demo", *args, "--dry-run")
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "PASSED demo --dry-run: 3 model(s) ready"
    for name in ("digits-resnet", "repvgg_a0", "ppocr-cls", "digits-test.npz (400)", "ocr-cls-eval.npz"):
        assert name in result.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


@pytest.mark.parametrize("models", ["tiny-resnet,no-such-net", "missing.onnx", "missing.py:build"])
@pytest.mark.parametrize("dry", [True, False])
def test_what_names_no_model_is_refused_before_any_work(cli, tmp_path, models, dry):
    result = cli("demo", "--models", models, "--out", tmp_path / "d", *(["--dry-run"] if dry else []))
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --models ") and ("unknown model" in line or "no such file" in line)
    assert list(tmp_path.iterdir()) == []


def test_json_never_overwrites_a_model_or_the_demos_own_files(cli, tiny_onnx, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    before = model.read_bytes()
    result = cli("demo", "--models", model, "--out", tmp_path / "d", "--json", model)
    assert result.exit_code == 2 and model.read_bytes() == before
    result = cli("demo", "--models", model, "--out", tmp_path, "--json", tmp_path / "index.html")
    assert result.exit_code == 2 and "writes that file itself" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.fixture(scope="module")
def demo_run(cli, tmp_path_factory, tiny_onnx, ppocr_models):
    """A small demo: a zoo model, the real OCR classifier, a model whose export cannot work, and an ONNX file
    whose stem is the zoo model's name (its folder must not be the zoo model's)."""
    out = tmp_path_factory.mktemp("demo") / "results"
    assert tiny_onnx.stem == "tiny-resnet"
    result = cli("demo", "--models", f"tiny-resnet,ppocr-cls,{BROKEN},{tiny_onnx}", "--shape", "1,3,32,32",
                 "--out", out, *FAST, "--json", out.parent / "demo-run.json")
    return out, result


def test_a_model_that_cannot_run_is_a_failed_row_not_a_crash(demo_run):
    out, result = demo_run
    assert result.exit_code == 1, result.output + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("FAILED demo: 1 of 4 model(s) — broken-spectral:") and "torch.onnx.export failed" in last
    assert "Traceback" not in result.output + result.stderr
    report = json.loads((out / "demo.json").read_text())
    rows = {m["model"]: m for m in report["models"]}
    assert rows["broken-spectral"]["verdict"] == "FAILED" and "not supported" in rows["broken-spectral"]["reason"]
    assert {rows[m]["verdict"] for m in ("tiny-resnet", "ppocr-cls", "tiny-resnet-2")} == {"PASSED"}
    assert rows["tiny-resnet-2"]["folder"] == "tiny-resnet-2" and (out / "tiny-resnet-2" / "manifest.json").is_file()
    assert report["exit_code"] == 1 and not report["passed"]
    page = (out / "index.html").read_text()
    assert "broken-spectral" in page and "torch.onnx.export failed" in page and "FAILED" in page
    run = json.loads((out.parent / "demo-run.json").read_text())  # --json: the same rows, with provenance
    assert [m["model"] for m in run["models"]] == [m["model"] for m in report["models"]]
    assert run["provenance"]["command"] == "demo" and run["exit_code"] == 1


def test_each_model_ran_the_pipeline_and_the_index_links_its_proof(cli, demo_run):
    out, _ = demo_run
    report = json.loads((out / "demo.json").read_text())
    page = (out / "index.html").read_text()
    for name in ("tiny-resnet", "ppocr-cls", "tiny-resnet-2"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        choice = manifest["choices"]["ort-cpu"]["chosen"]
        row = next(m for m in report["models"] if m["model"] == name)
        assert row["choices"]["ort-cpu"]["chosen"] == choice
        assert f"{name}/report.html" in page and f"{name}/manifest.json" in page
        verified = cli("verify", out / name / "manifest.json", "--no-latency")
        assert verified.exit_code == 0, verified.output
    # every candidate is a row with its verdict, whatever it was: chosen, slower, over budget or not built
    tiny = json.loads((out / "tiny-resnet" / "manifest.json").read_text())
    section = page[page.index("id='tiny-resnet'"):page.index("id='ppocr-cls'")]
    for c in tiny["candidates"]:
        assert f"<b>{c['name']}</b>" in section
        why = tiny["choices"]["ort-cpu"]["why_not"].get(c["name"])
        assert "chosen" in section if why is None else html.escape(why, quote=True) in section
    assert "not built: ONNX Runtime" in section  # fp16 on ort-cpu: said why, as a row


def test_the_real_ocr_classifier_keeps_its_accuracy_in_what_ships(demo_run):
    out, _ = demo_run
    report = json.loads((out / "demo.json").read_text())
    ocr = next(m for m in report["models"] if m["model"] == "ppocr-cls")
    ships = ocr["choices"]["ort-cpu"]
    assert ships["quality_metric"] == "accuracy" and ships["samples"] >= 100
    assert ships["reference_accuracy"] >= 90.0  # the real classifier reads these crops' orientation
    assert ships["drop"] <= 1.0  # the budget
    import onnx

    chosen = onnx.load(str(out / "ppocr-cls" / ships["file"]))
    stored = {p.key: p.value for p in chosen.metadata_props}
    spec = json.loads(stored["deploy.preprocess"])
    assert spec["bgr"] and spec["fit"] == "stretch" and spec["mean"] == [0.5, 0.5, 0.5]


def test_a_file_deploy_wrote_keeps_its_stored_preprocessing(cli, demo_run, tmp_path):
    import onnx

    out, _ = demo_run
    result = cli("demo", "--models", out / "ppocr-cls" / "fp32.onnx", "--shape", "1,3,48,192",
                 "--out", tmp_path / "again", *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    assert "preprocessing symmetric stretch BGR, as stored in" in result.stderr
    written = onnx.load(str(tmp_path / "again" / "fp32" / "fp32.onnx"))
    spec = json.loads({p.key: p.value for p in written.metadata_props}["deploy.preprocess"])
    assert spec["bgr"] and spec["fit"] == "stretch"


def test_a_crashed_candidate_is_exit_4_with_model_and_candidate_named(cli, tmp_path, monkeypatch):
    import deploy.pipelines.run

    def planted(*_args, **_kwargs):  # a deliberate bug in one candidate's builder
        raise KeyError("planted")

    monkeypatch.setattr(deploy.pipelines.run, "build_quantized", planted)
    out = tmp_path / "r"
    result = cli("demo", "--models", "tiny-resnet", "--out", out, *FAST)
    assert result.exit_code == 4, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("FAILED demo: 1 of 1 model(s) — tiny-resnet: int8: internal error KeyError")
    row = json.loads((out / "demo.json").read_text())["models"][0]
    assert row["verdict"] == "INTERNAL ERROR" and row["internal_errors"][0].startswith("int8: internal error")


def test_a_bug_is_exit_4_with_the_model_named(cli, tmp_path, monkeypatch):
    import deploy.pipelines.run

    def planted(*_args, **_kwargs):  # a deliberate bug inside the pipeline
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(deploy.pipelines.run, "choose", planted)
    out = tmp_path / "r"
    result = cli("demo", "--models", "tiny-resnet", "--out", out, *FAST)
    assert result.exit_code == 4, result.output
    assert "tiny-resnet: internal error ZeroDivisionError: planted" in result.stdout.strip().splitlines()[-1]
    assert json.loads((out / "demo.json").read_text())["models"][0]["verdict"] == "INTERNAL ERROR"
    assert (out / "index.html").is_file()


# ------------------------------------------------------------------------------------------- PP-OCR data


def test_orientation_data_is_labelled_and_split_by_line(ppocr_models):
    (x_tune, y_tune), (x_held, y_held) = ppocr.orientation_data()
    for x, y in ((x_tune, y_tune), (x_held, y_held)):
        assert x.shape[1:] == (3, 48, 192) and x.dtype == np.float32 and len(x) == len(y) >= 100
        assert -1.0 <= x.min() and x.max() <= 1.0  # (x/255 − 0.5)/0.5
        assert (y == 0).sum() == (y == 1).sum()  # each crop upright and turned
        half = len(x) // 2
        assert np.array_equal(x[half:], x[:half, :, ::-1, ::-1])
    # the held-out crops come from other text lines: no held-out crop equals a tuning crop
    tune = {a.tobytes() for a in x_tune[: len(x_tune) // 2]}
    assert not any(a.tobytes() in tune for a in x_held[: len(x_held) // 2])


def test_the_real_classifier_reads_the_crops(ppocr_models):
    import onnxruntime as ort

    session = ort.InferenceSession(str(ppocr.model_path("cls")), providers=["CPUExecutionProvider"])
    _, (x, y) = ppocr.orientation_data()
    probs = session.run(None, {"x": x})[0]
    assert probs.shape == (len(x), 2)
    accuracy = float((probs.argmax(axis=1) == y).mean())
    assert accuracy >= 0.9, accuracy  # trained weights on real text; chance is 0.5


def test_a_missing_model_cache_says_how_to_fill_it(tmp_path):
    from deploy.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match="make setup"):
        ppocr.model_path("cls", cache_dir=tmp_path)
    altered = ppocr.models_dir(tmp_path)
    altered.mkdir(parents=True)
    (altered / ppocr.MODELS["cls"][0]).write_bytes(b"not the model")
    with pytest.raises(MissingDependencyError, match="sha256"):
        ppocr.model_path("cls", cache_dir=tmp_path)


def test_text_lines_are_found_on_the_page_scan():
    import skimage.data

    lines = ppocr.text_lines(skimage.data.page())
    assert 6 <= len(lines) <= 9  # the heading, five lines of body text, the code line
    assert all(8 <= y1 - y0 <= 30 for y0, y1 in lines)


def test_the_real_recognizer_reads_the_page(ppocr_models):
    """PP-OCRv4 rec, as shipped, on the text lines of scikit-image's page scan: real text comes out."""
    import onnxruntime as ort
    import skimage.data

    path = ppocr.model_path("rec")
    characters = ppocr.rec_characters(path)
    assert len(characters) == 6625
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lines = ppocr.text_line_images(skimage.data.page())
    text = [ppocr.ctc_decode(session.run(None, {"x": ppocr.rec_input(line)})[0][0], characters) for line in lines]
    assert text[0].replace(" ", "") == "Region-basedsegmentation"
    assert "Let us first determine markers of the coins" in text[1]
    data = ppocr.rec_data()
    assert data.shape[1:] == (3, 48, 320) and len(data) >= 60


def test_the_real_detector_finds_the_text(ppocr_models):
    """PP-OCRv4 det on page crops: the probability map is high on the text lines and low between them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(ppocr.model_path("det")), providers=["CPUExecutionProvider"])
    x = ppocr.det_data(n=8)
    assert x.shape == (8, 3, 320, 320)
    maps = session.run(None, {"x": x})[0]
    assert maps.shape == (8, 1, 320, 320)
    text_share = (maps > 0.3).mean()
    assert 0.05 < text_share < 0.6  # text covers part of a page crop, not none of it and not all of it
