"""`deploy demo`: the main job on CPU (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import BadInputError
from .app import err, out, verb
from .options import OldInputs, Samples, examples, renamed


@verb(epilog=examples("deploy demo --out results", "deploy demo --models resnet50 --int8 resnet50 --no-digits"))
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the ONNX files and the report.")] = Path("results"),
    models: Annotated[str, typer.Option(help="Comma-separated zoo names.")] = "resnet18,mobilenet_v2",
    samples: Samples = 16,
    fuse_model: Annotated[str, typer.Option("--fuse-model", help="Train-form model to export, fuse and benchmark "
                          "('' to skip).")] = "repvgg_a0",
    int8: Annotated[str, typer.Option("--int8", help="Comma-separated models (of --models and --fuse-model) to "
                    "quantize to int8 and time against fp32 ('' to skip).")] = "resnet18,repvgg_a0",
    prune_model: Annotated[str, typer.Option("--prune", help="Zoo model to prune to half its MACs and time "
                           "against the original ('' to skip).")] = "resnet18",
    with_digits: Annotated[bool, typer.Option("--digits/--no-digits", help="Also train (or load) the digits nets "
                           "and report int8 accuracy on real labelled data (`deploy digits`).")] = True,
    old_inputs: OldInputs = None,
) -> None:
    """The main job on CPU: export each model, check ONNX Runtime against PyTorch on real photos, report;
    then a train-form model exported, fused by the ONNX stage alone, checked and benchmarked side by side;
    then int8 (deploy quantize, auto, ort-cpu) of resnet18 and of the fused model, scored and timed against fp32;
    then resnet18 pruned to half its MACs (deploy prune), verified and timed against the original;
    then the digits nets: int8 accuracy on real labelled data (`deploy digits`)."""
    from ..accuracy import run_digits_accuracy
    from ..demo_job import run_demo, run_fuse_demo, run_int8_demo, run_prune_demo, write_demo_report
    from ..models import UnknownModelError, get_model_entry
    from ..report import fmt_bytes

    samples = renamed(samples, old_inputs, "--inputs", default=16)

    names = tuple(n.strip() for n in models.split(",") if n.strip())
    int8_models = {n.strip() for n in int8.split(",") if n.strip()}
    for name in names:
        try:
            get_model_entry(name)
        except UnknownModelError as error:
            raise BadInputError(str(error)) from None
    for extra in (fuse_model, prune_model):
        if not extra:
            continue
        try:
            get_model_entry(extra)
        except UnknownModelError as error:
            raise BadInputError(str(error)) from None
    with err.status("demo", spinner="dots") as status:
        rows = run_demo(out_dir, names, samples, progress=lambda msg: status.update(msg))
        fuse_row = run_fuse_demo(out_dir, fuse_model, samples, progress=lambda msg: status.update(msg)) \
            if fuse_model else None
        int8_items = [(n, out_dir / f"{n}.onnx") for n in names if n in int8_models]
        if fuse_row is not None and fuse_model in int8_models:
            int8_items.append((f"{fuse_model} (fused)", out_dir / f"{fuse_model}.fused.onnx"))
        int8_rows = run_int8_demo(out_dir, int8_items, progress=lambda msg: status.update(msg))
        prune_row = run_prune_demo(out_dir, prune_model, progress=lambda msg: status.update(msg)) \
            if prune_model else None
        accuracy_rows = run_digits_accuracy(out_dir / "digits", progress=lambda msg: status.update(msg)) \
            if with_digits else []
    table = Table(title="deploy demo — PyTorch (torch-cpu) vs ONNX Runtime (ort-cpu) on bundled photos")
    for col in ("model", "params (ONNX)", "nodes", "file", "export s", "max rel err", "cosine", "top-1", "verdict"):
        table.add_column(col, justify="left" if col in ("model", "verdict") else "right")
    for r in rows:
        w = r.check.worst()
        table.add_row(r.model, f"{r.export.parameters:,}", str(r.export.nodes), fmt_bytes(r.export.file_bytes),
                      f"{r.export.export_seconds:.2f}", f"{w.max_rel:.2e}", f"{w.cosine:.6f}",
                      "-" if w.top1 is None else f"{w.top1:.3f}",
                      "[green]PASSED[/green]" if r.check.passed else "[red]FAILED[/red]")
    out.print(table)
    if fuse_row is not None:
        f = fuse_row
        table = Table(title=f"structural reparameterization — {f.model}: train-form export vs fused by the ONNX "
                            f"stage alone (ort-cpu, batch 1)")
        for col in ("artifact", "Conv nodes", "params", "max rel err vs PyTorch", "median ms", "fused / train"):
            table.add_column(col, justify="left" if col == "artifact" else "right")
        table.add_row("train-form export", str(f.train_convs), f"{f.train_params:,}", "-", f"{f.train_ms:.2f}",
                      "baseline")
        table.add_row(f"fused ({f.fuse_seconds:.1f} s)", str(f.fused_convs), f"{f.fused_params:,}",
                      f"{f.check.worst().max_rel:.2e}", f"{f.fused_ms:.2f}",
                      f"{f.ratio:.3f} [{f.ratio_low:.3f}, {f.ratio_high:.3f}]")
        out.print(table)
    if int8_rows:
        table = Table(title="int8 — deploy quantize (auto, ort-cpu) vs the fp32 export, held-out photos; ort-cpu "
                            "batch 1")
        for col in ("model", "method", "centred SQNR dB", "top-1 agree", "int convs", "fp32 ms", "int8 ms",
                    "int8 / fp32", "speed-up"):
            table.add_column(col, justify="left" if col in ("model", "method") else "right")
        for r in int8_rows:
            table.add_row(r.model, r.method, f"{r.centred_sqnr_db:.1f}",
                          "-" if r.top1_agreement is None else f"{r.top1_agreement:.1f} %",
                          f"{r.integer_convs}/{r.convs}", f"{r.fp32_ms:.2f}", f"{r.int8_ms:.2f}",
                          f"{r.ratio:.3f} [{r.ratio_low:.3f}, {r.ratio_high:.3f}]", f"{1 / r.ratio:.2f}×")
        out.print(table)
    if prune_row is not None:
        p = prune_row
        table = Table(title=f"structured pruning — {p.model} to half its MACs (deploy prune --macs 0.5), ort-cpu "
                            f"batch 1, interleaved with the original")
        for col in ("artifact", "MACs", "params", "latency / original", "speed-up", "ONNX vs pruned torch"):
            table.add_column(col, justify="left" if col == "artifact" else "right")
        table.add_row("original", f"{p.macs_before / 1e6:,.0f} M", f"{p.params_before:,}", "1", "", "")
        table.add_row(f"pruned (×{p.round_to} channels)", f"{p.macs_after / 1e6:,.0f} M", f"{p.params_after:,}",
                      f"{p.ratio:.3f} [{p.ratio_low:.3f}, {p.ratio_high:.3f}]", f"{1 / p.ratio:.2f}×",
                      f"{p.export_max_rel:.2e}")
        out.print(table)
    if accuracy_rows:
        table = Table(title="int8 accuracy on real data — nets trained on scikit-learn's digits (400 test images)")
        for col in ("model", "form", "fp32 acc", "int8 acc", "drop", "method", "kept in float"):
            table.add_column(col, justify="left" if col in ("model", "form", "method") else "right")
        for r in accuracy_rows:
            table.add_row(r.model, r.form, f"{r.fp32_accuracy:.2f} %", f"{r.int8_accuracy:.2f} %", f"{r.drop:+.2f}",
                          r.method, str(len(r.kept_float)) if r.kept_float else "-")
        out.print(table)
    md, js = write_demo_report(rows, out_dir, fuse_row, int8_rows, accuracy_rows, prune_row)
    out.print(f"report: {md} and {js}", markup=False)
    failed = [r.model for r in rows if not r.check.passed]
    if fuse_row is not None and not fuse_row.check.passed:
        failed.append(f"{fuse_row.model} (fused)")
    if prune_row is not None and not prune_row.passed:
        failed.append(f"{prune_row.model} (pruned)")
    typer.echo(f"FAILED demo: {', '.join(failed)}" if failed else f"PASSED demo: {len(rows)} model(s)")
    if failed:
        raise typer.Exit(1)
