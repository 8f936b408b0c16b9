"""deploy sweep: the file is checked before any cell starts; cells run as real verbs on a local Ray or a
local pool; a killed worker's cell is retried and no finished cell is lost; a rerun does nothing new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWEEP = """\
retries = 2

[matrix]
models = [
  "tiny-resnet",
  "{second}",
  "tiny-convnet",
]
verbs = ["export", "quantize"]
backends = ["{backend}"]

[args]
quantize = ["--samples", "24", "--eval-samples", "8", "--allow-poor"]
"""


def _write(tmp_path: Path, second: str = "tiny-mobilenet", backend: str = "ort-cpu", text: str | None = None) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text if text is not None else SWEEP.format(second=second, backend=backend))
    return path


@pytest.mark.parametrize("second, backend, line, words", [
    ("tiny-resnt", "ort-cpu", 6, "unknown model 'tiny-resnt'"),
    ("tiny-mobilenet", "ort-gpu", 10, "unknown backend 'ort-gpu'"),
])
def test_bad_sweep_file_is_refused_naming_the_line(cli, tmp_path, second, backend, line, words):
    path = _write(tmp_path, second, backend)
    result = cli("sweep", path, "--ray", "off")
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}: {words}" in result.stderr
    assert not (tmp_path / "sweep-results").exists()  # no cell started, no folder made


def test_bad_verb_and_keys_are_named_too(cli, tmp_path):
    text = SWEEP.format(second="tiny-mobilenet", backend="ort-cpu").replace('"quantize"]', '"quantise"]')
    result = cli("sweep", _write(tmp_path, text=text), "--ray", "off")
    assert result.exit_code == 2 and ":9: unknown verb 'quantise'" in result.stderr
    result = cli("sweep", _write(tmp_path, text="retry = 2\n[matrix]\nmodels=['tiny-resnet']\nverbs=['export']\n"))
    assert result.exit_code == 2 and ":1: unknown key 'retry'" in result.stderr
    result = cli("sweep", _write(tmp_path, text="[args]\nexport = ['-o', 'x.onnx']\n[matrix]\nmodels=['tiny-resnet']\n"
                                              "verbs=['export']\n"))
    assert result.exit_code == 2 and "-o is the sweep's to set" in result.stderr


def test_without_ray_the_error_says_how_to_install_it(tmp_path):
    path = _write(tmp_path)
    code = ("import sys; sys.modules['ray'] = None\nfrom deploy.cli import main\n"
            f"sys.argv = ['deploy', 'sweep', {str(path)!r}]\nmain()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "pip install 'deploy[ray]'" in done.stderr and "--ray off --workers N" in done.stderr


def test_pool_runs_the_matrix_and_a_rerun_skips_it(cli, tmp_path):
    text = SWEEP.format(second="tiny-mobilenet", backend="ort-cpu").replace('  "tiny-convnet",\n', "") \
        .replace('["export", "quantize"]', '["export"]')
    path = _write(tmp_path, text=text)
    result = cli("sweep", path, "--ray", "off", "--workers", "2", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["counts"] == {"passed": 2} and data["ran"] == 2
    for cell in data["cells"]:
        folder = Path(cell["command"][cell["command"].index("-o") + 1]).parent
        assert (folder / "model.onnx").is_file() and cell["result"]["passed"] is True
    assert (tmp_path / "sweep-results" / "report.html").read_text().count("<tr") == 3
    again = cli("sweep", path, "--ray", "off", "--json", tmp_path / "s2.json")
    assert again.exit_code == 0 and json.loads((tmp_path / "s2.json").read_text())["ran"] == 0


def _ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _ray_available(), reason="ray not installed (pip install '.[ray]')")
def test_ray_sweep_survives_a_killed_worker_and_resumes(tmp_path):
    """3 tiny models × 2 verbs on a local Ray with 2 workers; one worker is killed while it runs a quantize
    cell: that cell is retried, every cell passes, and a rerun runs nothing."""
    import psutil

    path = _write(tmp_path)
    deploy = [sys.executable, "-m", "deploy.cli"]
    log = open(tmp_path / "sweep.log", "w")
    sweep = subprocess.Popen([*deploy, "sweep", str(path), "--workers", "2", "--json", str(tmp_path / "s.json")],
                             stdout=log, stderr=subprocess.STDOUT)
    killed, victim, start = None, None, time.time()
    try:
        while sweep.poll() is None and killed is None and time.time() - start < 240:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                command = " ".join(proc.info["cmdline"] or [])
                if "deploy.cli quantize" not in command:
                    continue
                try:
                    worker = proc.parent()
                    title = " ".join(worker.cmdline()) if worker else ""
                except psutil.Error:
                    continue
                if "ray::" in title:
                    time.sleep(1.0)  # mid-cell
                    victim = command.split(" -o ")[1].split()[0]
                    worker.kill()
                    killed = worker.pid
                    break
            time.sleep(0.2)
        assert sweep.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert killed is not None, "no Ray worker was seen running a quantize cell"
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["counts"] == {"passed": 6} and data["executor"] == "ray:local"
    attempts = {c["cell"]: c["attempts"] for c in data["cells"]}
    hit = next(c["cell"] for c in data["cells"] if Path(victim).parent.name in " ".join(c["command"]))
    assert attempts[hit] == 2 and all(n == 1 for cell, n in attempts.items() if cell != hit), attempts
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    stamps = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "sweep-results" / "cells").glob("*/cell.json")}
    assert len(stamps) == 6
    again = subprocess.run([*deploy, "sweep", str(path), "--json", str(tmp_path / "s2.json")], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "s2.json").read_text())["ran"] == 0
    assert stamps == {p: os.stat(p).st_mtime_ns for p in stamps}  # nothing rewritten


@pytest.mark.skipif(not _ray_available(), reason="ray not installed (pip install '.[ray]')")
def test_a_cell_no_node_can_run_is_refused_before_any_starts(cli, tmp_path):
    text = "[matrix]\nmodels = ['tiny-resnet']\nverbs = ['export']\nbackends = ['ort-cpu', 'trt']\n"
    result = cli("sweep", _write(tmp_path, text=text), "--workers", "1")
    assert result.exit_code == 3, result.output
    assert "tiny-resnet · export · trt: no node of the Ray cluster (local) offers" in result.stderr
    assert "TensorRT=1" in result.stderr
    assert not list((tmp_path / "sweep-results").glob("cells/*/cell.json"))


def test_a_crashing_cell_is_retried_then_failed_and_the_others_kept(cli, tmp_path):
    """bench on ort-cuda exits 3 here (no CUDA): retried `retries` times, recorded failed; export passes."""
    text = ("retries = 1\n[matrix]\nmodels = ['tiny-resnet']\nverbs = ['export', 'bench']\n"
            "backends = ['ort-cuda']\n[resources.ort-cuda]\ncpus = 1\ngpus = 0\n")
    path = _write(tmp_path, text=text)
    result = cli("sweep", path, "--ray", "off", "--json", tmp_path / "s.json")
    assert result.exit_code == 1 and "FAILED sweep" in result.output
    cells = {c["verb"]: c for c in json.loads((tmp_path / "s.json").read_text())["cells"]}
    assert cells["bench"]["status"] == "failed" and cells["bench"]["attempts"] == 2 and cells["bench"]["rc"] == 3
    assert "exit 3 on every one of 2 attempts" in cells["bench"]["error"]
    assert cells["export"]["status"] == "passed" and cells["export"]["attempts"] == 1
    assert cli("sweep", path, "--ray", "off", "--json", tmp_path / "s2.json").exit_code == 1
    assert json.loads((tmp_path / "s2.json").read_text())["ran"] == 1  # the failed cell only, never the passed
