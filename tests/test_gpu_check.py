"""`make gpu-check` (scripts/gpu_check.py): one line and exit 3 without a GPU; with --as-cpu the same steps run on
the CUDA backends' CPU twins and its JSON holds what ran, what was skipped and why, and each figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="this machine has a CUDA GPU: the no-GPU answer does not apply")
def test_without_a_gpu_it_says_why_in_one_line_and_exits_3(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "gc")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here"), done.stdout
    doc = json.loads((tmp_path / "gc" / "gpu-check.json").read_text())
    assert doc["format"] == "deploy.gpu-check/1" and doc["counts"]["skipped"] == 1 and not doc["counts"]["passed"]


def test_as_cpu_runs_every_step_but_trt_and_writes_the_figures(tmp_path):
    out = tmp_path / "gc"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--as-cpu", "--quick", "--model",
                           "tiny-resnet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((out / "gpu-check.json").read_text())
    steps = {s["step"]: s for s in doc["steps"]}
    assert doc["counts"] == {"passed": 7, "failed": 0, "error": 0, "skipped": 2}, doc["counts"]
    assert all(s["status"] == "skipped" and "TensorRT" in s["why"] for n, s in steps.items() if n.startswith("trt"))
    fp32 = steps["ort-cuda: fp32 file against ort-cpu"]["figures"]
    assert fp32["verdict"] == "PASSED" and fp32["max_rel"] <= 1e-5
    int8 = steps["ort-cuda: int8 file against the fp32 file (int8 preset)"]["figures"]
    assert int8["precision"] == "int8" and int8["cosine"] >= 0.99
    bench = steps["ort-cuda: bench fp32 and int8"]["figures"]["results"]
    assert len(bench) == 2 and all(r["median_ms"] > 0 for r in bench)
