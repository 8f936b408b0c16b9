"""Reports as terminal tables (rich) and as JSON files (written atomically)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from ..backends.ort_graph import round_trips_text
from .compare import CompareReport
from .stats import ratio_verdict


def fmt_count(n: int) -> str:
    return f"{n:,}"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fmt_db(x: float) -> str:
    return "∞" if x == math.inf else ("-∞" if x == -math.inf else f"{x:.1f}")


def compare_table(report: CompareReport) -> Table:
    table = Table(title=f"{report.candidate} ({report.backend_candidate}) vs {report.reference} "
                        f"({report.backend_reference}) — {report.data}, {report.precision} tolerance")
    exact = any(o.reference_fp32_error is not None for o in report.outputs)
    columns = ["output", "shape", "max abs", "max rel", *(["ref fp32 err"] if exact else []), "cosine", "SQNR dB",
               "centred SQNR", "top-1", "verdict"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("output", "verdict") else "right")
    for o in report.outputs:
        verdict = "[green]ok[/green]" if o.passed else f"[red]{'; '.join(o.failures)}[/red]"
        floor = [f"{o.reference_fp32_error:.3g}" if o.reference_fp32_error is not None else "-"] if exact else []
        table.add_row(o.name, "×".join(map(str, o.shape)), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", *floor,
                      f"{o.cosine:.6f}", fmt_db(o.sqnr_db), fmt_db(o.centred_sqnr_db),
                      "-" if o.top1 is None else f"{o.top1:.3f}", verdict)
    return table


def judged_as(o) -> list[str]:
    """How an output was judged where the preset adapts to what it carries (compare's module docstring)."""
    lines = []
    if o.distribution_axis is not None and o.tv_p95 is not None:
        lines.append(f"{o.name} is a probability output (sums to 1 along axis {o.distribution_axis}): judged by the "
                     f"probability mass moved, total variation {o.tv_p95:.3f} at the 95th percentile of positions"
                     f"{'' if o.tolerance.max_tv is None else f' (at most {o.tolerance.max_tv:g})'}; the argmax "
                     f"agrees at {100 * o.top1_positions:.1f} % of positions")
    if o.silent_channels:
        lines.append(f"{o.name}: {o.silent_channels} score channel(s) carry no signal on this data (fp32 below 2/255 "
                     f"everywhere, e.g. a class absent from the inputs): judged in uint8 steps, each within 2")
    return lines


def print_compare(report: CompareReport, console: Console) -> None:
    console.print(compare_table(report))
    for note in [*report.notes, *(line for o in report.outputs for line in judged_as(o))]:
        console.print(f"note: {note}", markup=False)


def ops_table(title: str, columns: dict[str, dict[str, int]]) -> Table:
    """Op histogram, one count column per stage (e.g. before/after)."""
    table = Table(title=title)
    table.add_column("op")
    for name in columns:
        table.add_column(name, justify="right")
    ops = sorted({op for hist in columns.values() for op in hist},
                 key=lambda op: (-max(h.get(op, 0) for h in columns.values()), op))
    for op in ops:
        table.add_row(op, *(str(h.get(op, 0)) for h in columns.values()))
    table.add_row("[bold]total[/bold]", *(f"[bold]{sum(h.values())}[/bold]" for h in columns.values()))
    return table


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} %"


LAYOUT_OPS = {"QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
              "ReorderInput", "ReorderOutput", "Identity", "Shape", "Gather", "Slice", "Concat"}


def runs_as(ops: dict[str, int], trips: dict | None = None) -> str:
    """What ONNX Runtime CPU really runs: the integer kernels, every op left computing in float, and the round
    trips (DequantizeLinear → float ops → QuantizeLinear) among them: where an int8 file's time goes."""
    integer = {k: v for k, v in ops.items() if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger",
                                                             "NhwcMaxPool", "QAttention"))}
    floats = {k: v for k, v in ops.items() if k not in integer and k not in LAYOUT_OPS}
    text = ", ".join(f"{v} {k}" for k, v in sorted(integer.items(), key=lambda kv: -kv[1])) or "no integer kernel"
    left = ", ".join(f"{v} {k}" for k, v in sorted(floats.items(), key=lambda kv: -kv[1]))
    line = f"ONNX Runtime CPU runs: {text}; in float: {left or 'nothing'}"
    if trips is not None:
        line += "; " + round_trips_text(trips)
    return line


def ov_runs_as(kernels: dict) -> str:
    """What OpenVINO's CPU plugin compiled: integer vs float convolutions and matmuls (its runtime graph)."""
    parts = [f"{kernels.get(k, 0)} {k}" for k in ("int8 convolutions", "float convolutions", "int8 matmuls",
                                                   "float matmuls", "reorders") if kernels.get(k)]
    return "OpenVINO CPU runs: " + (", ".join(parts) or "no convolution or matmul")


def print_quantize(report, console: Console) -> None:
    """`deploy quantize`: the scored candidates, the sensitivity ranking, and what ONNX Runtime runs."""
    if report.scores:
        title = ("tournament: every method from one histogram pass, scored on held-out data"
                 if len(report.scores) > 1 else "score on held-out data")
        table = Table(title=f"{title} ({report.eval_samples} samples, {report.eval_data})")
        for col in ("candidate", "samples", "top-1 agreement", "accuracy", "centred SQNR", "SQNR", "cosine", ""):
            table.add_column(col, justify="left" if col in ("candidate", "") else "right")
        for s in report.scores:
            agreement = _pct(s.top1_agreement) + (f" [{s.top1_interval[0]:.0f}, {s.top1_interval[1]:.0f}]"
                                                  if s.top1_interval else "")
            table.add_row(s.label, str(s.samples), agreement, _pct(s.accuracy), fmt_db(s.centred_sqnr_db),
                          fmt_db(s.sqnr_db), f"{s.cosine:.5f}", "← written" if s.label == report.chosen else "")
        console.print(table)
        if any(s.samples < report.eval_samples for s in report.scores):
            console.print("tournament: every method on the first quarter of the held-out data, the best two on "
                          "all of it", markup=False)
        if any(s.top1_interval for s in report.scores):
            console.print("top-1 agreement ranks class-like outputs first, [95 % interval]; then centred SQNR",
                          markup=False)
    if report.fp32_accuracy is not None:
        console.print(f"fp32 accuracy on the held-out data: {report.fp32_accuracy:.2f} %", markup=False)
    if report.preset_failures:
        console.print(f"{'POOR' if report.allowed_poor else 'FAILED'}: misses deploy check's {report.precision} preset "
                      f"on held-out data: {'; '.join(report.preset_failures)}", markup=False,
                      style="bold red")
    if report.sensitivity:
        table = Table(title="sensitivity: each layer kept in float alone (most sensitive first)")
        for col in ("layer", "centred SQNR", "gain", "top-1 agreement", "accuracy"):
            table.add_column(col, justify="left" if col == "layer" else "right")
        for row in report.sensitivity[:15]:
            table.add_row(row["layer"], fmt_db(row["centred_sqnr_db"]), f"{row['sqnr_gain_db']:+.2f} dB",
                          _pct(row["top1_agreement"]), _pct(row["accuracy"]))
        console.print(table)
        if len(report.sensitivity) > 15:
            console.print(f"… {len(report.sensitivity) - 15} more layers in the JSON report", markup=False)
    if report.kept_float:
        console.print(f"kept in float: {', '.join(report.kept_float)}", markup=False)
    if len(getattr(report, "steps", [])) > 1:
        for step in report.steps:
            sqnr = step["centred_sqnr_db"]
            figures = [f"centred SQNR {fmt_db(math.inf if sqnr is None else sqnr)} dB"]
            if step["top1_agreement"] is not None:
                figures.append(f"top-1 agreement {step['top1_agreement']:.1f} %")
            if step["accuracy"] is not None:
                figures.append(f"accuracy {step['accuracy']:.2f} %")
            verdict = "meets the int8 preset" if not step["preset_failures"] else "; ".join(step["preset_failures"])
            kept = {True: " (kept)", False: " (not kept)"}.get(step.get("kept"), "")
            seconds = f", {step['seconds']:.1f} s" if step.get("seconds") is not None else ""
            console.print(f"{step['step']}{kept}: {', '.join(figures)}{seconds} — {verdict}", markup=False)
    if report.int8_mac_share is not None and report.kept_float:
        console.print(f"int8 keeps {report.int8_mac_share:.1%} of the quantizable layers' MACs", markup=False)
    if getattr(report, "placement", None):
        pl = report.placement
        verdicts = {True: "meets the preset", False: "misses it"}
        tried = "; ".join(f"{name} ×{c['ratio']:.2f} [{c.get('ratio_low', c['ratio']):.2f}–"
                          f"{c.get('ratio_high', c['ratio']):.2f}] ({verdicts[not c['preset_failures']]})"
                          for name, c in pl["candidates"].items())
        console.print(f"placement {pl['chosen']}: int8 time over fp32 at batch {pl['batch']}, interleaved: {tried}",
                      markup=False)
    if report.integer_kernels and report.integer_kernels.get("runtime") == "ov-cpu":
        console.print(ov_runs_as(report.integer_kernels), markup=False)
    elif report.integer_kernels:
        console.print(runs_as(report.integer_kernels.get("ops", {}), report.integer_kernels.get("round_trips")),
                      markup=False)
    if report.latency:
        lat = report.latency
        verdict = ratio_verdict(lat["ratio"], lat.get("ratio_low", lat["ratio"]), lat.get("ratio_high", lat["ratio"]))
        runtime = {"ov-cpu": "OpenVINO CPU"}.get(lat.get("runtime"), "ONNX Runtime CPU")
        console.print(f"{runtime}, batch {lat['batch']}, interleaved ({lat['runs']} rounds): fp32 "
                      f"{lat['fp32_ms']:.2f} ms, int8 {lat['int8_ms']:.2f} ms — int8 {verdict}", markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    sizes = f"{fmt_bytes(report.bytes_before)} → {fmt_bytes(report.bytes_after)}"
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    table_note = f"; ranges table {report.table_path}" if report.table_path else ""
    console.print(f"nodes {report.nodes_before} → {report.nodes_after}; weights {sizes}; {secs}{table_note}",
                  markup=False)
