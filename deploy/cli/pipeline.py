"""`deploy pipeline` (the fastest proven artifact per backend, a report and a manifest) and `deploy verify`
(the manifest's proof checked again, for CI)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import api, err, guard, out, resolve_threads, spec_inputs, verb, write_report
from .options import (
    DATA,
    Bgr,
    Data,
    Interp,
    Json,
    Layout,
    LetterboxAnchor,
    Mean,
    Pad,
    Preprocess,
    Resize,
    Samples,
    Scale,
    Shape,
    Std,
    Threads,
    Weights,
)
from .options import examples as _examples


@verb(epilog=_examples(
    "deploy pipeline resnet18 -o out/r18 --backend ort-cpu --max-drop 1.0",
    "deploy pipeline digits-resnet -w net.safetensors --data calib.npz --eval test.npz -o out/d --max-drop 0.5",
    "deploy pipeline net.onnx -o out/net --backend ort-cpu,trt --min-sqnr 30 --prune-latency none"))
def pipeline(
    model: Annotated[str, typer.Argument(help="Model spec (zoo name, file.py:factory) or .onnx file. Pruned "
                     "candidates need the PyTorch model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the artifacts, report.html and "
                      "manifest.json: new, empty, or an earlier pipeline's (replaced whole at the end).")],
    backend: Annotated[str, typer.Option(help="Backends to time and choose for, comma-separated: ort-cpu, "
                       "ov-cpu (OpenVINO: its own int8 file, and bf16 where the CPU has it), ort-cuda, "
                       "trt.")] = "ort-cpu",
    max_drop: Annotated[float | None, typer.Option(help="Budget: top-1 points lost on held-out data (accuracy "
                        "with labelled .npz data, else disagreement with fp32). Default 1.0 when no budget is "
                        "given.")] = None,
    min_sqnr: Annotated[float | None, typer.Option(help="Budget: mean-centred SQNR of the outputs against fp32, "
                        "dB (for non-classifier heads).")] = None,
    weights: Weights = None,
    shape: Shape = None,
    data: Data = "photos",
    eval_data: Annotated[str | None, typer.Option("--eval", help="Held-out data for the certificates (default: "
                         "the samples of --data after the tuning ones).")] = None,
    samples: Samples = 256,
    eval_samples: Annotated[int, typer.Option(help="Held-out samples each candidate is certified on.")] = 100,
    prune_latency: Annotated[str, typer.Option(help="Pruned candidates: fractions of the fp32 latency to reach "
                             "(measured on the first backend), or none.")] = "0.7,0.5",
    distil: Annotated[bool | None, typer.Option("--distil/--no-distil", help="Distil pruned models from the "
                      "unpruned one without labels (default: when --data is your own data).")] = None,
    timing_batch: Annotated[int, typer.Option(help="Batch size the candidates are timed (and pruned) at.")] = 1,
    min_time: Annotated[float, typer.Option(help="Seconds of interleaved timing per backend (at least 20 "
                        "rounds).")] = 3.0,
    preprocess: Preprocess = None,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    bgr: Bgr = None,
    resize: Resize = None,
    layout: Layout = None,
    pad: Pad = None,
    anchor: LetterboxAnchor = None,
    interp: Interp = None,
    threads: Threads = None,
    json_path: Json = None,
) -> None:
    """One command to the fastest artifact within an accuracy budget, per backend, proven and reported.

    Exports MODEL (certified equal to it), runs the exact passes, then builds candidates: fused fp32, fp16
    where the backend computes in it, int8 (calibration tournament, layer fallback under the budget), pruned
    at each --prune-latency target and pruned+int8. Each is certified against the fp32 export on held-out
    samples that tuned nothing, and all are timed interleaved on each backend. Writes DIR/report.html (one
    self-contained page: Pareto chart, candidate table, the choice and why the others lost) and
    DIR/manifest.json (hashes, versions, tolerances, figures) for `deploy verify`. Exit 1 when some backend
    has no candidate within the budget.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..harness.report import fmt_db

    guard([], [("--json", json_path)])
    threads = resolve_threads(threads)
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("pipeline", total=1)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total, description=text[:110])

        report = api.pipeline(
            model, output, weights=weights, shape=shape, backend=backend, max_drop=max_drop, min_sqnr=min_sqnr,
            data=data, eval_data=eval_data, samples=samples, eval_samples=eval_samples, prune_latency=prune_latency,
            distil=distil, timing_batch=timing_batch, min_time=min_time, threads=threads,
            command=["deploy", *sys.argv[1:]], progress=progress, preprocess=preprocess, mean=mean, std=std,
            scale=scale, bgr=bgr, resize=resize, layout=layout, pad=pad, anchor=anchor, interp=interp)
    _print_table(report, fmt_db)
    write_report(json_path, report.to_dict(), inputs=spec_inputs("model", model) + [("weights", weights)],
                 outputs=[("manifest", output / "manifest.json"), ("report", output / "report.html")],
                 threads=threads)
    typer.echo(report.summary())
    if not report.passed:
        raise typer.Exit(1)


def _print_table(report, fmt_db) -> None:
    from rich.table import Table

    from ..pipelines.pareto import speed_text

    labels = report.held_out.labels is not None
    for backend, choice in report.choices.items():
        timings = report.timings[backend]
        table = Table(title=f"{report.model} on {backend}, batch {report.options.batch}: budget "
                            f"{report.options.budget.describe(labels)}")
        for col in ("candidate", "median ms", "vs fp32 [95 % CI]", "accuracy %" if labels else "agreement %",
                    "centred SQNR", "MB", "verdict"):
            table.add_column(col, justify="left" if col in ("candidate", "verdict") else "right")
        for c in report.candidates:
            t = timings.get(c.name)
            cert = c.certificate
            q = "—" if cert is None else (f"{cert.accuracy:.2f}" if labels and cert.accuracy is not None else
                                          (f"{cert.agreement:.1f}" if cert.agreement is not None else "—"))
            verdict = "[bold green]chosen[/]" if c.name == choice.chosen else choice.losers.get(c.name, "")
            table.add_row(c.name, f"{t.median_ms:.3f}" if t else "—",
                          ("1" if c.name == "fp32" else speed_text(t))
                          if t else "—", q, fmt_db(cert.centred_sqnr_db) if cert else "—",
                          f"{c.bytes / 1e6:.2f}" if c.built else "—", verdict[:90])
        out.print(table)


@verb(epilog=_examples(
    "deploy verify out/r18/manifest.json",
    "deploy verify out/r18/manifest.json --max-slowdown 0.25 --junit verify.xml",
    "deploy verify out/r18 --no-latency --data ./held-out.npz"))
def verify(
    manifest: Annotated[Path, typer.Argument(help="DIR/manifest.json written by deploy pipeline (or DIR).")],
    max_slowdown: Annotated[float, typer.Option(help="Latency regression allowed: fail when the ratio to the "
                            "fp32 export, measured interleaved now, is above recorded × (1 + this) even at its "
                            "interval's low end.")] = 0.15,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Also time the chosen artifacts "
                       "against fp32 (backends not available here are skipped).")] = True,
    all_latency: Annotated[bool, typer.Option("--all", help="Time every candidate, not only the chosen "
                           "ones.")] = False,
    data: Annotated[str | None, DATA] = None,
    min_time: Annotated[float, typer.Option(help="Seconds of interleaved timing per backend.")] = 2.0,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write the cases as JUnit XML (one "
                     "testcase per hash, certificate and latency check) for CI dashboards.")] = None,
    threads: Threads = None,
    json_path: Json = None,
) -> None:
    """Re-run a pipeline manifest's certificates on this machine; exit 1 on drift or a latency regression.

    Checks that every artifact is the certified file (sha256), re-judges each against the fp32 export on the
    recorded held-out samples (a figure below the recorded one by more than its tolerance, or a chosen
    artifact now over budget, fails), and times the chosen artifacts against fp32 interleaved: ratios, so a
    different machine compares fairly.
    """
    from rich.table import Table

    from ..pipelines.verify import write_junit

    threads = resolve_threads(threads) if threads is not None else None  # None: the manifest's (capped here)
    guard([], [("--junit", junit), ("--json", json_path)])
    with err.status("verify", spinner="dots") as status:
        report = api.verify(manifest, max_slowdown=max_slowdown, latency=latency, all_latency=all_latency, data=data,
                            min_time=min_time, threads=threads, progress=status.update)
    table = Table(title=f"deploy verify {manifest}")
    for col in ("check", "artifact", "result", "detail"):
        table.add_column(col)
    style = {"passed": "[green]passed[/]", "failed": "[bold red]FAILED[/]", "skipped": "[yellow]skipped[/]"}
    for c in report.cases:
        table.add_row(c.kind, c.name, style[c.status], c.message)
    out.print(table)
    for note in report.notes:
        err.print(f"note: {note}", markup=False)
    if junit:
        write_junit(report, junit)
    write_report(json_path, report.to_dict(), inputs=[("manifest", manifest)], threads=threads)
    typer.echo(report.summary())
    if not report.passed:
        raise typer.Exit(1)
