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
class Int8Row:
    """An fp32 ONNX file quantized by `deploy quantize` (auto, ort-cpu), scored and timed against itself."""

    model: str
    fp32_path: str
    int8_path: str
    method: str
    centred_sqnr_db: float
    top1_agreement: float | None
    integer_convs: int
    convs: int
    fp32_ms: float
    int8_ms: float
    ratio: float
    ratio_low: float
    ratio_high: float
    quantize_seconds: float
    chart: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def run_int8_demo(out_dir: Path, items: list[tuple[str, Path]], samples: int = 64, eval_samples: int = 32,
                  progress: Callable[[str], None] | None = None) -> list[Int8Row]:
    """Quantize each (label, fp32 .onnx) for ONNX Runtime CPU and time fp32 vs int8 side by side."""
    from .bench import BenchConfig, run_bench
    from .quantize import QuantizeOptions, quantize_artifact
    from .spec import load_onnx_artifact

    say = progress or (lambda _msg: None)
    rows = []
    for label, fp32_path in items:
        int8_path = fp32_path.with_name(fp32_path.stem + ".int8.onnx")
        report = quantize_artifact(load_onnx_artifact(fp32_path), int8_path, QuantizeOptions(
            samples=samples, eval_samples=eval_samples), progress=lambda msg, n=label: say(f"{n} int8: {msg}"))
        say(f"{label}: benchmarking fp32 vs int8 (ort-cpu, batch 1)")
        bench = run_bench([(f"{label} fp32", load_onnx_artifact(fp32_path)),
                           (f"{label} int8", load_onnx_artifact(int8_path))],
                          ["ort-cpu"], BenchConfig(batches=(1,), min_runs=30, min_time=2.0))
        chart = None
        try:
            from .plot import plot_latency

            chart = str(plot_latency(bench, out_dir / f"{fp32_path.stem}.int8-latency.png",
                                     title=f"{label}: fp32 vs int8, ONNX Runtime CPU"))
        except Exception:  # matplotlib missing or failing: the table still stands
            chart = None
        base, fast = bench.results
        k = report.integer_kernels or {}
        f = report.final
        rows.append(Int8Row(label, str(fp32_path), str(int8_path), report.chosen, f.centred_sqnr_db,
                            f.top1_agreement, k.get("QLinearConv", 0), k.get("QLinearConv", 0)
                            + k.get("Conv (float)", 0), base.stats.median * 1e3, fast.stats.median * 1e3,
                            fast.ratio.ratio, fast.ratio.low, fast.ratio.high, report.seconds["total"], chart))
    return rows


@dataclass
class PruneRow:
    """A zoo model pruned to half its MACs (`deploy prune --macs 0.5`), exported, timed against the original."""

    model: str
    onnx: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    round_to: int
    ratio: float
    ratio_low: float
    ratio_high: float
    export_max_rel: float | None
    passed: bool
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def run_prune_demo(out_dir: Path, name: str, macs: float = 0.5, batch: int = 1,
                   progress: Callable[[str], None] | None = None) -> PruneRow:
    from .prune import PruneSettings, PruneTarget
    from .prune_job import PruneJobOptions, prune_artifact

    say = progress or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.pruned.onnx"
    settings = PruneSettings(PruneTarget("macs", macs), round_to=None, backend="ort-cpu", batch=batch)
    report = prune_artifact(load_artifact(name), path, PruneJobOptions(settings, samples=32),
                            progress=lambda msg: say(f"{name} prune: {msg}"))
    o = report.outcome
    lat = o.latency
    return PruneRow(name, str(path), o.macs_before, o.macs_after, o.params_before, o.params_after, o.round_to,
                    lat.latency_ratio, lat.low, lat.high, report.export_max_rel,
                    report.export_check.startswith("PASSED"), report.seconds)


def prune_markdown(row: PruneRow | None) -> list[str]:
    if row is None:
        return []
    r = row
    return [f"## Structured pruning: {r.model} (`deploy prune {r.model} --macs 0.5`)", "",
            "| | MACs | params | ort-cpu batch 1 latency / original [95% CI] | ONNX vs pruned torch (max rel) |",
            "|---|---:|---:|---|---:|",
            f"| original | {r.macs_before / 1e6:,.0f} M | {r.params_before:,} | 1 | — |",
            f"| pruned (multiples of {r.round_to}) | {r.macs_after / 1e6:,.0f} M | {r.params_after:,} | "
            f"{r.ratio:.3f} [{r.ratio_low:.3f}, {r.ratio_high:.3f}] — {1 / r.ratio:.2f}× faster | "
            f"{r.export_max_rel:.2e} ({'PASSED' if r.passed else 'FAILED'}) |", "",
            "Random weights: the accuracy of pruning is shown on trained nets (`tests/test_prune_cli.py`, digits).", ""]


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


def int8_markdown(rows: list[Int8Row]) -> list[str]:
    if not rows:
        return []
    lines = ["## Int8 (`deploy quantize --method auto --target ort-cpu`)", "",
             "Scored against the fp32 file on held-out photo crops (not seen in calibration); latency is ONNX "
             "Runtime CPU at batch 1, fp32 and int8 interleaved in one run.", "",
             "| model | method | centred SQNR dB | top-1 agree | integer convs | fp32 ms | int8 ms | int8 / fp32 "
             "[95% CI] | speed-up |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        agree = "—" if r.top1_agreement is None else f"{r.top1_agreement:.1f} %"
        lines.append(f"| {r.model} | {r.method} | {r.centred_sqnr_db:.1f} | {agree} | {r.integer_convs}/{r.convs} | "
                     f"{r.fp32_ms:.2f} | {r.int8_ms:.2f} | {r.ratio:.3f} [{r.ratio_low:.3f}, {r.ratio_high:.3f}] | "
                     f"{1 / r.ratio:.2f}× |")
    lines.append("")
    for r in rows:
        if r.chart:
            lines += [f"![{r.model} latency]({Path(r.chart).name})", ""]
    return lines


def demo_markdown(rows: list[DemoRow], fuse_row: FuseRow | None = None, int8_rows: list[Int8Row] | None = None,
                  accuracy_rows: list | None = None, prune_row: PruneRow | None = None) -> str:
    from .accuracy import accuracy_markdown

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
    lines += int8_markdown(int8_rows or [])
    lines += prune_markdown(prune_row)
    lines += accuracy_markdown(accuracy_rows or [])
    return "\n".join(lines)


def write_demo_report(rows: list[DemoRow], out_dir: Path, fuse_row: FuseRow | None = None,
                      int8_rows: list[Int8Row] | None = None, accuracy_rows: list | None = None,
                      prune_row: PruneRow | None = None) -> tuple[Path, Path]:
    md = out_dir / "demo.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(demo_markdown(rows, fuse_row, int8_rows, accuracy_rows, prune_row))
    tmp.replace(md)
    data = {"exports": [r.to_dict() for r in rows], "fuse": fuse_row.to_dict() if fuse_row else None,
            "int8": [r.to_dict() for r in int8_rows or []],
            "digits_accuracy": [r.to_dict() for r in accuracy_rows or []],
            "prune": prune_row.to_dict() if prune_row else None}
    return md, write_json(out_dir / "demo.json", data)
