"""`make gpu-check`: every CUDA path deploy has, run once on this machine, and one JSON of what ran.

Steps (each skipped with its reason when its backend cannot run here; a failing step never stops the rest):

1. ``torch-cuda``: ``deploy check`` of the model on torch-cuda against torch-cpu (fp32 preset), then ``deploy bench``
   torch-cpu vs torch-cuda at batch 1 and 8 (CUDA-event timing).
2. ``ort-cuda`` (onnxruntime-gpu): the fp32 export checked on ort-cuda against ort-cpu; an int8 file quantized
   for ort-cuda (S8S8) checked at the int8 preset; fp32 and int8 benched on ort-cuda.
3. ``trt`` (tensorrt + pycuda): an fp16 engine and an int8 engine built from the files above, each checked against
   the fp32 export and benched with it.

Without a CUDA GPU it prints one line and exits 3 (the JSON still says why). Exit 0: every step that ran passed;
1: a step failed or errored. JSON layout (``--json``, default ``gpu-check/gpu-check.json``): see docs/backends.md.

``--as-cpu`` runs the same steps with each CUDA backend replaced by its CPU twin (torch-cpu, ort-cpu; trt is
skipped): it exercises this script on a machine without a GPU and is what the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

FORMAT = "deploy.gpu-check/1"
NO_GPU_EXIT = 3
BUDGET_SECONDS = 8 * 60  # the whole run, on a GPU machine; a step that would start past it is skipped
CPU_TWIN = {"torch-cuda": "torch-cpu", "ort-cuda": "ort-cpu"}


def _gpu_or_reason() -> tuple[bool, str]:
    from deploy.gpu import device_facts, driver_probe

    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.cuda.is_available():
        return True, device_facts().get("gpu") or "a CUDA GPU"
    driver = driver_probe()
    build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
    return False, f"no CUDA GPU here ({driver.detail}; torch {torch.__version__}, {build})"


class Run:
    """The steps, their outcomes and figures, written as one JSON."""

    def __init__(self, out: Path, model: str, as_cpu: bool, quick: bool):
        self.out, self.model, self.as_cpu, self.quick = out, model, as_cpu, quick
        self.steps: list[dict] = []
        self.start = time.perf_counter()

    def backend(self, name: str) -> str:
        return CPU_TWIN.get(name, name) if self.as_cpu else name

    def available(self, name: str) -> tuple[bool, str]:
        from deploy.backends import get_runner_class

        if self.as_cpu and name == "trt":
            return False, "--as-cpu: TensorRT has no CPU twin"
        return get_runner_class(self.backend(name)).available()

    def step(self, name: str, backend: str, fn, needs: tuple[str, ...] = ()) -> dict | None:
        """Run ``fn() -> (passed, figures)`` as step ``name``; skipped when a backend it needs cannot run here or
        the time budget is spent. Returns the figures, or None when it did not pass."""
        record = {"step": name, "backend": backend, "status": "skipped", "why": None, "figures": {}, "seconds": 0.0}
        self.steps.append(record)
        for need in (backend, *needs):
            ok, why = self.available(need)
            if not ok:
                record["why"] = f"{need} unavailable: {why}"
                print(f"skipped  {name}: {record['why']}", flush=True)
                return None
        if not self.quick and time.perf_counter() - self.start > BUDGET_SECONDS:
            record["why"] = f"the {BUDGET_SECONDS // 60}-minute budget is spent"
            print(f"skipped  {name}: {record['why']}", flush=True)
            return None
        t0 = time.perf_counter()
        try:
            passed, figures = fn()
            record.update(status="passed" if passed else "failed", figures=figures)
        except Exception as err:  # a step's error is its outcome, the run goes on
            record.update(status="error", why=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                          traceback=traceback.format_exc(limit=6))
        record["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{record['status']:<8} {name} ({record['seconds']:.0f} s)"
              + (f": {record['why']}" if record["why"] else ""), flush=True)
        return record["figures"] if record["status"] == "passed" else None

    def write(self, machine: dict) -> dict:
        counts = {s: sum(r["status"] == s for r in self.steps) for s in ("passed", "failed", "error", "skipped")}
        doc = {"format": FORMAT, "model": self.model, "as_cpu": self.as_cpu, "machine": machine,
               "seconds": round(time.perf_counter() - self.start, 1), "counts": counts, "steps": self.steps}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        return doc


def _check_figures(report) -> tuple[bool, dict]:
    d = report.to_dict()
    worst = report.worst()
    return bool(report.passed), {"verdict": "PASSED" if report.passed else "FAILED", "precision": d.get("precision"),
                                 "max_rel": worst.max_rel, "cosine": worst.cosine, "samples": d.get("samples"),
                                 "summary": report.summary()}


def _bench_figures(report) -> tuple[bool, dict]:
    rows = []
    for r in report.to_dict().get("results", []):
        latency, ratio = r.get("latency_ms") or {}, r.get("ratio_to_baseline")
        rows.append({"label": r.get("label"), "backend": r.get("backend"), "batch": r.get("batch"),
                     "median_ms": latency.get("median"), "p90_ms": latency.get("p90"), "runs": latency.get("n"),
                     "items_per_s": r.get("throughput_per_s"), "ratio_to_baseline": ratio,
                     "baseline": r.get("baseline"), "device_mb": (r.get("memory") or {}).get("device_mb")})
    return True, {"results": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="zoo name or file.py:factory (default resnet18)")
    parser.add_argument("--out", default="gpu-check", help="folder for the files it makes (default gpu-check/)")
    parser.add_argument("--json", default=None, help="the JSON (default OUT/gpu-check.json)")
    parser.add_argument("--as-cpu", action="store_true", help="CPU twins instead of the CUDA backends (no GPU "
                        "needed: tests this script)")
    parser.add_argument("--quick", action="store_true", help="short timings and few samples (the test suite)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    run = Run(Path(args.json) if args.json else out / "gpu-check.json", args.model, args.as_cpu, args.quick)

    from deploy.gpu import device_facts

    machine = device_facts()
    if not args.as_cpu:
        ok, why = _gpu_or_reason()
        if not ok:
            run.steps.append({"step": "gpu", "backend": None, "status": "skipped", "why": why, "figures": {},
                              "seconds": 0.0})
            run.write(machine)
            print(f"gpu-check: {why} — nothing run (exit {NO_GPU_EXIT}); {run.out}", flush=True)
            return NO_GPU_EXIT

    import deploy

    out.mkdir(parents=True, exist_ok=True)
    timing = {"min_time": 0.3, "min_runs": 5, "max_time": 5.0} if args.quick else {"min_time": 2.0, "max_time": 20.0}
    batches = "1" if args.quick else "1,8"
    samples = 4 if args.quick else 8
    model, fp32, int8 = args.model, out / "model.onnx", out / "model.int8.onnx"

    run.step("torch-cuda: check against torch-cpu (fp32)", "torch-cuda", lambda: _check_figures(
        deploy.check(model, model, backend_a="torch-cpu", backend_b=run.backend("torch-cuda"), samples=samples)))
    run.step("torch-cuda: bench torch-cpu vs torch-cuda", "torch-cuda", lambda: _bench_figures(
        deploy.bench(model, backend=f"torch-cpu,{run.backend('torch-cuda')}", batch=batches, memory="off",
                     **timing)))

    def export() -> tuple[bool, dict]:
        for path in (fp32, int8):
            path.unlink(missing_ok=True)
        report = deploy.export(model, fp32, samples=samples)
        return bool(report.passed), {"summary": report.summary()}

    exported = run.step("export: the fp32 ONNX file (CPU)", "ort-cpu", export) is not None
    if exported:
        run.step("ort-cuda: fp32 file against ort-cpu", "ort-cuda", lambda: _check_figures(
            deploy.check(fp32, fp32, backend_a="ort-cpu", backend_b=run.backend("ort-cuda"), samples=samples)))

        def quantize() -> tuple[bool, dict]:
            report = deploy.quantize(fp32, int8, target="ort-cuda", samples=32 if args.quick else 128,
                                     eval_samples=16 if args.quick else 64, allow_poor=True)
            return bool(report.passed), {"summary": report.summary(), "method": report.chosen}

        quantized = run.step("ort-cuda: quantize for ort-cuda (S8S8, CPU calibration)", "ort-cuda", quantize) \
            is not None or int8.is_file()
        if quantized:
            run.step("ort-cuda: int8 file against the fp32 file (int8 preset)", "ort-cuda", lambda: _check_figures(
                deploy.check(fp32, int8, backend_a="ort-cpu", backend_b=run.backend("ort-cuda"), precision="int8",
                             samples=samples)))
        files = [fp32, *([int8] if int8.is_file() else [])]
        run.step("ort-cuda: bench fp32 and int8", "ort-cuda", lambda: _bench_figures(
            deploy.bench(*files, backend=run.backend("ort-cuda"), batch=batches, memory="off", **timing)))
        for precision in ("fp16", "int8"):
            engine = out / f"model.{precision}.engine"

            def build(precision=precision, engine=engine) -> tuple[bool, dict]:
                source = int8 if precision == "int8" and int8.is_file() else fp32
                result = deploy.build(source, engine, precision=precision if source == fp32 else "auto")
                return True, {"summary": result.summary(), "source": source.name}

            if run.step(f"trt: build a {precision} engine", "trt", build) is not None:
                run.step(f"trt: {precision} engine against the fp32 file", "trt", lambda p=precision, e=engine:
                         _check_figures(deploy.check(fp32, e, backend_a="ort-cpu", precision=p, samples=samples)))
                run.step(f"trt: bench the fp32 file and the {precision} engine", "trt", lambda e=engine:
                         _bench_figures(deploy.bench(fp32, e, backend="trt", batch=batches, memory="off",
                                                     **timing)))
    doc = run.write(machine)
    c = doc["counts"]
    print(f"gpu-check: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped in "
          f"{doc['seconds']:.0f} s; {run.out}", flush=True)
    return 1 if c["failed"] or c["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
