"""The main job (`deploy demo`, `make demo`): export zoo models, prove them on real photos, report.

Each model is loaded with realistic numerics (seeded weights, BN statistics from the bundled photos),
exported to ONNX (TorchScript exporter, opset 17, simplified, dynamic batch), and checked in ONNX
Runtime against PyTorch on photo crops the BN statistics never saw.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .compare import CompareReport
from .export import ExportReport, export_onnx
from .harness import check_artifacts
from .report import fmt_bytes, write_json
from .spec import load_artifact

DEMO_MODELS = ("resnet18", "mobilenet_v2")
DEMO_FUSE_MODEL = "repvgg_a0"


@dataclass
class FuseRow:
    """A train-form model exported, then fused by the ONNX stage alone, both checked and timed."""

    model: str
    train_convs: int
    fused_convs: int
    train_params: int
    fused_params: int
    check: CompareReport
    train_ms: float
    fused_ms: float
    ratio: float
    ratio_low: float
    ratio_high: float
    fuse_seconds: float

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in self.__dict__.items()}


def run_fuse_demo(out_dir: Path, name: str = DEMO_FUSE_MODEL, samples: int = 16,
                  progress: Callable[[str], None] | None = None) -> FuseRow:
    from .bench import BenchConfig, run_bench
    from .fuse import fuse_artifact
    from .spec import load_onnx_artifact

    say = progress or (lambda _msg: None)
    say(f"{name}: exporting the train form")
    original = load_artifact(name)
    train_path, fused_path = out_dir / f"{name}.train.onnx", out_dir / f"{name}.fused.onnx"
    export_onnx(original, train_path, progress=lambda msg: say(f"{name}: {msg}"))
    say(f"{name}: fusing (ONNX stage alone)")
    fused = fuse_artifact(load_onnx_artifact(train_path), fused_path, passes=["onnx_reparam"], verify=False)
    say(f"{name}: checking the fused file against the PyTorch original")
    check = check_artifacts(original, load_onnx_artifact(fused_path), samples=samples, data="photos")
    say(f"{name}: benchmarking train form vs fused (ort-cpu, batch 1)")
    bench = run_bench([(str(train_path), load_onnx_artifact(train_path)), (str(fused_path),
                                                                            load_onnx_artifact(fused_path))],
                      ["ort-cpu"], BenchConfig(batches=(1,), min_runs=30, min_time=3.0))
    train, fast = bench.results
    return FuseRow(name, fused.before.get("Conv", 0), fused.after.get("Conv", 0), fused.before["params"],
                   fused.after["params"], check, train.stats.median * 1e3, fast.stats.median * 1e3,
                   fast.ratio.ratio, fast.ratio.low, fast.ratio.high, fused.passes[0]["seconds"])


@dataclass
class DemoRow:
    model: str
    export: ExportReport
    check: CompareReport
    load_seconds: float

    def to_dict(self) -> dict:
        return {"model": self.model, "load_seconds": round(self.load_seconds, 3), "export": self.export.to_dict(),
                "check": self.check.to_dict()}


def run_demo(out_dir: Path, models: tuple[str, ...] = DEMO_MODELS, samples: int = 16,
             progress: Callable[[str], None] | None = None) -> list[DemoRow]:
    say = progress or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in models:
        say(f"{name}: loading")
        start = time.perf_counter()
        artifact = load_artifact(name)
        load_seconds = time.perf_counter() - start
        onnx_path = out_dir / f"{name}.onnx"
        export = export_onnx(artifact, onnx_path, progress=lambda msg, n=name: say(f"{n}: {msg}"))
        say(f"{name}: checking on {samples} photo crops")
        from .spec import load_onnx_artifact

        check = check_artifacts(artifact, load_onnx_artifact(onnx_path), samples=samples, data="photos")
        rows.append(DemoRow(name, export, check, load_seconds))
    return rows


def demo_markdown(rows: list[DemoRow], fuse_row: FuseRow | None = None) -> str:
    lines = [
        "# deploy demo",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}.",
        "Models: seeded random weights with BN statistics from the bundled photos; checks on other photo crops.",
        "",
        "| model | params (ONNX) | nodes | file | export s | max rel err | cosine | top-1 agree | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        w = r.check.worst()
        lines.append(f"| {r.model} | {r.export.parameters:,} | {r.export.nodes} | {fmt_bytes(r.export.file_bytes)} | "
                     f"{r.export.export_seconds:.2f} | {w.max_rel:.2e} | {w.cosine:.6f} | "
                     f"{'-' if w.top1 is None else f'{w.top1:.3f}'} | {'PASSED' if r.check.passed else 'FAILED'} |")
    lines += ["", "Each row: `deploy export MODEL -o MODEL.onnx`, then `deploy check MODEL MODEL.onnx --data photos`.",
              ""]
    if fuse_row is not None:
        f = fuse_row
        w = f.check.worst()
        lines += [
            f"## Structural reparameterization: {f.model}", "",
            "| artifact | Conv nodes | params | max rel err vs PyTorch | ort-cpu batch 1 median ms |",
            "|---|---:|---:|---:|---:|",
            f"| train-form export | {f.train_convs} | {f.train_params:,} | — | {f.train_ms:.2f} |",
            f"| fused (onnx_reparam, {f.fuse_seconds:.1f} s) | {f.fused_convs} | {f.fused_params:,} | "
            f"{w.max_rel:.2e} ({'PASSED' if f.check.passed else 'FAILED'}) | {f.fused_ms:.2f} |",
            "", f"Fused / train latency: {f.ratio:.3f} [{f.ratio_low:.3f}, {f.ratio_high:.3f}] (95% CI, interleaved "
            f"rounds) — {1 / f.ratio:.2f}× faster.", ""]
    return "\n".join(lines)


def write_demo_report(rows: list[DemoRow], out_dir: Path, fuse_row: FuseRow | None = None) -> tuple[Path, Path]:
    md = out_dir / "demo.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(demo_markdown(rows, fuse_row))
    tmp.replace(md)
    data = {"exports": [r.to_dict() for r in rows], "fuse": fuse_row.to_dict() if fuse_row else None}
    return md, write_json(out_dir / "demo.json", data)
