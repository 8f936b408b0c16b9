"""Each bench entry's own memory, measured in a fresh process so the number does not depend on what ran
before it in the same one.

In one process, an entry measured after others reuses the heap they freed: int8 resnet50 grew RSS by
2 MB after its fp32 original, and by far more when measured first. A child process loads the artifact,
records its resident memory, creates the runner, runs the warm-up on the bench's inputs and reports the
peak growth (sampled after each run, and the kernel's own high-water mark). Libraries are imported before
the baseline, so their code is not counted; the artifact is loaded before it too, as in the bench process.

Run as ``python -m deploy.harness.memory '<json job>'``; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..artifacts.artifact import Artifact

CHILD_TIMEOUT_S = 300


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


def _device_free_mb() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return free / 2**20
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        return None
    return None


class MemoryWatch:
    """Peak growth of resident memory and of used device memory since creation, sampled on demand."""

    def __init__(self):
        self.rss0, self.free0 = _rss_mb(), _device_free_mb()
        self.rss_peak, self.device_peak = 0.0, 0.0

    def sample(self) -> None:
        rss, free = _rss_mb(), _device_free_mb()
        if rss is not None and self.rss0 is not None:
            self.rss_peak = max(self.rss_peak, rss - self.rss0)
        if free is not None and self.free0 is not None:
            self.device_peak = max(self.device_peak, self.free0 - free)

    @property
    def rss_mb(self) -> float | None:
        return None if self.rss0 is None else self.rss_peak

    @property
    def device_mb(self) -> float | None:
        return None if self.free0 is None else self.device_peak


def job_for(artifact: Artifact, backend: str, batch: int, threads: int | None, runs: int, seed: int,
            allow_spinning: bool) -> dict | None:
    """What a child needs to load the artifact again, or None when it cannot be (a module built in memory)."""
    if artifact.kind == "onnx" and artifact.onnx_path is not None:
        source = {"onnx": str(artifact.onnx_path),
                  "shapes": {s.name: list(s.shape) for s in artifact.inputs}}
    elif artifact.kind == "torch" and artifact.origin:
        source = {"spec": artifact.origin["spec"], "weights": artifact.origin.get("weights"),
                  "shapes": artifact.origin.get("shapes") or {}}
    else:
        return None
    return {"source": source, "backend": backend, "batch": batch, "threads": threads, "runs": runs, "seed": seed,
            "allow_spinning": allow_spinning}


def measure_fresh(job: dict) -> tuple[float | None, float | None]:
    """(RSS growth MB, device memory MB) of one entry in a new process; raises RuntimeError on failure."""
    done = subprocess.run([sys.executable, "-m", "deploy.harness.memory", json.dumps(job)], capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT_S, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed: {tail[:200]}")
    result = json.loads(lines[-1])
    return result["rss_mb"], result["device_mb"]


def _child(job: dict) -> dict:
    import resource

    import numpy as np  # noqa: F401  libraries first: their code is not the entry's memory
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    from ..artifacts.inputs import make_feeds
    from ..artifacts.spec import load_artifact, load_onnx_artifact
    from ..backends import get_runner_class

    source = job["source"]
    if "onnx" in source:
        artifact = load_onnx_artifact(source["onnx"])
        shapes = {name: tuple(dims) for name, dims in source["shapes"].items()}
        artifact.inputs = [type(s)(s.name, shapes.get(s.name, s.shape), s.dtype) for s in artifact.inputs]
    else:
        shapes = {(k or None): tuple(v) for k, v in source["shapes"].items()} or None
        artifact = load_artifact(source["spec"], weights=source["weights"], shape=shapes)
    feeds = make_feeds(artifact.inputs, samples=job["batch"], batch=job["batch"], data=None,
                       seed=job["seed"]).batches[0]
    high_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    watch = MemoryWatch()
    with get_runner_class(job["backend"])(artifact, threads=job["threads"],
                                          allow_spinning=job["allow_spinning"]) as runner:
        watch.sample()
        for _ in range(max(1, job["runs"])):
            runner.infer(feeds)
            watch.sample()
        high_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss = watch.rss_mb
    if rss is not None and high_after > high_before and watch.rss0 is not None:
        rss = max(rss, high_after - watch.rss0)
    return {"rss_mb": rss, "device_mb": watch.device_mb}


if __name__ == "__main__":  # pragma: no cover - exercised through measure_fresh
    print(json.dumps(_child(json.loads(sys.argv[1]))))
