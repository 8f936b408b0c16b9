"""The CLI's promises: inputs are never overwritten, one vocabulary of options across verbs, verdict lines
CI can grep, provenance in every JSON report, files that honour the umask."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import typer

from deploy.cli import app
from deploy.cli import options as vocab

FAST_Q = ("--samples", "8", "--eval-samples", "8", "--method", "minmax")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def model(tiny_onnx, tmp_path) -> Path:
    """A private copy of the tiny ONNX file: tests here try to overwrite it."""
    path = tmp_path / "a.onnx"
    path.write_bytes(tiny_onnx.read_bytes())
    return path


def _overwrite_cases(tmp: Path, a: Path) -> dict[str, tuple[list[str], Path]]:
    link = tmp / "link.onnx"
    link.symlink_to(a.name)
    hard = tmp / "hard.onnx"
    os.link(a, hard)
    data = tmp / "calib.npz"
    np.savez(data, input=np.zeros((4, 3, 32, 32), np.float32))
    return {
        "quantize -o its input": (["quantize", a, "-o", a, *FAST_Q], a),
        "quantize -o a symlink to its input": (["quantize", a, "-o", link, *FAST_Q], a),
        "fuse -o a hard link of its input": (["fuse", a, "-o", hard], a),
        "export -o its weights": (["export", "tiny-resnet", "-o", tmp / "w.onnx", "--json", tmp / "w.onnx"], None),
        "check --json onto an input": (["check", a, a, "--json", a], a),
        "check --json onto a symlinked input": (["check", "tiny-resnet", a, "--json", link], a),
        "quantize --json onto its calibration data": (["quantize", a, "-o", tmp / "q.onnx", "--data", data,
                                                       "--json", data, *FAST_Q], data),
        "quantize --trt-cache onto its output": (["quantize", a, "-o", tmp / "q.onnx", "--trt-cache", tmp / "q.onnx",
                                                  *FAST_Q], None),
        "bench --csv onto an artifact": (["bench", a, "--csv", a], a),
        "bench --md and --plot the same file": (["bench", a, "--md", tmp / "x.md", "--plot", tmp / "x.md"], None),
    }


CASES = ["quantize -o its input", "quantize -o a symlink to its input", "fuse -o a hard link of its input",
         "export -o its weights", "check --json onto an input", "check --json onto a symlinked input",
         "quantize --json onto its calibration data", "quantize --trt-cache onto its output",
         "bench --csv onto an artifact", "bench --md and --plot the same file"]


@pytest.mark.parametrize("case", CASES)
def test_outputs_never_overwrite_inputs(cli, model, tmp_path, case):
    args, protected = _overwrite_cases(tmp_path, model)[case]
    before = {p: sha(p) for p in tmp_path.iterdir() if p.is_file()}
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "same file" in lines[0] or "never overwrites its inputs" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing written, no temp left
    assert {p: sha(p) for p in before} == before
    if protected is not None:
        assert sha(protected) == before[protected]


def test_missing_output_folder_is_reported_before_any_work(cli, model, tmp_path):
    result = cli("check", "tiny-resnet", model, "--json", tmp_path / "nodir" / "c.json")
    assert result.exit_code == 2
    assert "folder" in result.stderr and str(tmp_path / "nodir") in result.stderr
    assert "running" not in result.output  # the comparison never started


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the refusal cannot happen")
def test_read_only_folder_names_the_folder_given(cli, model, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = cli("fuse", model, "-o", ro / "f.onnx")
    finally:
        ro.chmod(0o755)
    assert result.exit_code == 2 and f"cannot write in folder {ro}" in result.stderr
    assert ".f.onnx" not in result.stderr  # never a temporary name


# --- one vocabulary ---------------------------------------------------------------------------------------
def _verbs() -> dict[str, typing.Callable]:
    return {(c.name or c.callback.__name__): inspect.unwrap(c.callback) for c in app.registered_commands}


def decls(info: typer.models.OptionInfo) -> tuple[str, ...]:
    """An option's names: with Annotated, typer keeps the first name in ``default``."""
    first = (info.default,) if isinstance(info.default, str) and info.default.startswith("-") else ()
    return (*first, *info.param_decls)


def _option_infos(fn) -> dict[str, typer.models.OptionInfo]:
    hints = typing.get_type_hints(fn, include_extras=True)
    found = {}
    for name, hint in hints.items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, typer.models.OptionInfo):
                found[name] = meta
    return found


MODEL_VERBS = {"inspect", "export", "fuse", "quantize", "check", "bench"}
DATA_VERBS = {"export", "fuse", "quantize", "check"}
RUNNING_VERBS = {"export", "fuse", "quantize", "check", "bench"}


def test_shared_options_are_the_same_objects_in_every_verb():
    shared_flags = {decl: info for info in vocab.SHARED.values() for decl in decls(info)}
    for verb, fn in _verbs().items():
        infos = _option_infos(fn)
        for info in infos.values():
            for decl in decls(info):
                if decl in shared_flags and not info.hidden:
                    assert info is shared_flags[decl], f"{verb}: {decl} is not the shared option object"
        flags = {d for info in infos.values() if not info.hidden for d in decls(info)}
        if verb in MODEL_VERBS:
            assert {"--weights", "--shape"} <= flags, verb
        if verb in DATA_VERBS:
            assert {"--data", "--samples"} <= flags, verb
            assert "--inputs" not in flags and "--calib" not in flags, verb
        if verb in RUNNING_VERBS:
            assert "--threads" in flags, verb
            assert infos[next(n for n, i in infos.items() if "--threads" in decls(i))] is vocab.THREADS
        if "--batch" in flags:
            assert verb == "bench", f"{verb}: --batch means the batch sizes bench times; use --run-batch"
    assert {"--weights-b"} <= {d for i in _option_infos(_verbs()["check"]).values() for d in decls(i)}
    for verb in ("check", "bench"):
        assert _option_infos(_verbs()[verb])["weights_b"] is vocab.WEIGHTS_B


def test_old_spellings_still_work_hidden(cli, tiny_onnx, tmp_path):
    result = cli("check", "tiny-resnet", tiny_onnx, "--inputs", "3", "--batch", "3", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["samples"] == 3
    assert "--inputs is now --samples" in result.stderr
    result = cli("check", "tiny-resnet", tiny_onnx, "--inputs", "3", "--samples", "4")
    assert result.exit_code == 2 and "give --samples once" in result.stderr
    assert "--inputs" not in cli("check", "--help").output


def test_check_reads_the_npz_quantize_reads(cli, tiny_onnx, tmp_path):
    data = tmp_path / "val.npz"
    np.savez(data, input=np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32))
    result = cli("check", "tiny-resnet", tiny_onnx, "--data", data, "--samples", "5", "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["samples"] == 5 and str(data) in report["data"]
    assert {f["role"] for f in report["provenance"]["inputs"]} >= {"--data", "CANDIDATE", "REFERENCE"}


@pytest.mark.parametrize("verb", sorted(_verbs()))
def test_every_verb_help_ends_with_examples(cli, verb):
    text = cli(verb, "--help").output
    assert "Examples:" in text
    assert text.count(f"$ deploy {verb}") >= 2, text


def test_version(cli):
    from deploy import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"deploy {__version__}"


# --- verdicts ---------------------------------------------------------------------------------------------
def test_bench_max_ratio_fails_a_pair_that_is_the_same(cli, tiny_onnx, tmp_path):
    args = ("bench", tiny_onnx, tiny_onnx, "--min-runs", "8", "--min-time", "0", "--warmup", "3", "--memory", "off")
    result = cli(*args, "--max-ratio", "0.5", "--json", tmp_path / "b.json")
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("FAILED bench") and "--max-ratio 0.5" in last
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["passed"] is False and report["regressions"]
    prov = report["provenance"]
    assert prov["deploy"] and prov["utc"].endswith("+00:00") and prov["command"] == "bench"
    assert [f["sha256"] for f in prov["inputs"] if f["role"].startswith("ARTIFACT")] == [sha(tiny_onnx)] * 2
    assert prov["environment"]["libraries"]["onnxruntime"]
    result = cli(*args, "--max-ratio", "3")
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1].startswith("PASSED bench")
    # a gate that compares nothing must not pass
    result = cli("bench", tiny_onnx, "--min-runs", "3", "--min-time", "0", "--warmup", "2", "--memory", "off",
                 "--max-ratio", "1.05")
    assert result.exit_code == 1 and "no entry has a baseline" in result.output.strip().splitlines()[-1]


def test_missed_budget_is_failed_and_writes_nothing_unless_kept(cli, tiny_onnx, tmp_path):
    out = tmp_path / "b.onnx"
    args = ("quantize", tiny_onnx, "-o", out, *FAST_Q, "--min-sqnr", "200")
    result = cli(*args, "--json", tmp_path / "b.json")
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("FAILED") and "not written" in last
    assert not out.exists() and not (tmp_path / "b.ranges.json").exists()
    assert json.loads((tmp_path / "b.json").read_text())["written"] is False
    result = cli(*args, "--keep-failed")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("FAILED") and out.is_file()


def test_files_honour_the_umask(cli, tiny_onnx, tmp_path):
    old = os.umask(0o022)
    try:
        result = cli("check", "tiny-resnet", tiny_onnx, "--samples", "2", "--json", tmp_path / "c.json")
        assert result.exit_code == 0, result.output
        q = tmp_path / "q.onnx"
        result = cli("quantize", tiny_onnx, "-o", q, *FAST_Q, "--trt-cache", tmp_path / "q.cache")
        assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    for name in ("c.json", "q.onnx", "q.ranges.json", "q.cache"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_speed_label_says_same_when_the_interval_spans_one():
    from deploy.harness.bench import BenchResult, speedup_text
    from deploy.harness.stats import RatioEstimate, summarize

    def result(ratio, low, high):
        return BenchResult("x", "x", "ort-cpu", 1, "all", summarize([0.001] * 5), 1, None, None,
                           RatioEstimate(ratio, low, high, 0.95, 5), "base")

    assert speedup_text(result(0.99, 0.97, 1.02)).startswith("same")
    assert speedup_text(result(0.5, 0.45, 0.55)) == "2.00× faster"
    assert speedup_text(result(1.25, 1.2, 1.3)) == "0.80× (slower)"


def test_quantize_a_static_batch_file_runs_whole_batches(cli, tmp_path):
    static = tmp_path / "static.onnx"
    assert cli("export", "tiny-resnet", "-o", static, "--static", "--shape", "2,3,32,32").exit_code == 0
    q = tmp_path / "static.int8.onnx"
    result = cli("quantize", static, "-o", q, "--samples", "7", "--eval-samples", "5", "--method", "minmax")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("PASSED") and q.is_file()
    result = cli("quantize", static, "-o", q, *FAST_Q, "--run-batch", "4")
    assert result.exit_code == 2 and "fixes the batch at 2" in result.stderr


def test_fuse_refuses_dynamic_on_an_onnx_file(cli, model, tmp_path):
    result = cli("fuse", model, "-o", tmp_path / "f.onnx", "--dynamic", "height")
    assert result.exit_code == 2 and "--dynamic applies when fuse exports" in result.stderr
