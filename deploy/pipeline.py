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


def demo_markdown(rows: list[DemoRow]) -> str:
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
    return "\n".join(lines)


def write_demo_report(rows: list[DemoRow], out_dir: Path) -> tuple[Path, Path]:
    md = out_dir / "demo.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(demo_markdown(rows))
    tmp.replace(md)
    return md, write_json(out_dir / "demo.json", [r.to_dict() for r in rows])
