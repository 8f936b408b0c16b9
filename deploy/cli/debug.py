"""`deploy debug`: where two artifacts diverge, layer by layer, and a reproducer of the first divergence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import BadInputError
from .app import (
    api,
    err,
    guard,
    out,
    resolve_threads,
    verb,
    write_report,
)
from .options import (
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
    RunBatch,
    Samples,
    Scale,
    Shape,
    Std,
    Threads,
    Weights,
    examples,
)


def _db(x: float | None) -> str:
    from ..harness.report import fmt_db

    return "-" if x is None else fmt_db(x)


def print_debug(report, top: int) -> None:
    """The alignment line, the first divergence with its inputs' errors, the N worst layers."""
    a = report
    out.print(f"aligned {len(a.layers)} of {a.candidate_tensors} tensors of {a.candidate} "
              f"(Conv/Gemm outputs {a.convs_aligned} of {a.convs_total}"
              + (f"; {a.qdq_tensors} Q/DQ tensors stand for aligned ones" if a.qdq_tensors else "")
              + (f"; {a.reference_only} reference tensors have no partner: removed by a pass" if a.reference_only
                 else "") + ")", markup=False)
    first = a.first
    if first is not None:
        by_tensor = {e.tensor: e for e in a.layers}
        out.print(f"first divergence: {first.node} ({first.op}) → {first.tensor} ↔ {first.reference}: "
                  f"{'; '.join(first.accumulated.failures)}", markup=False)
        for name in first.boundary:
            feed = by_tensor.get(name)
            state = (f"max rel {feed.accumulated.max_rel:.2e}, SQNR {_db(feed.accumulated.sqnr_db)} dB"
                     if feed else "a graph input (the same for both)")
            out.print(f"  input {name}: {state}", markup=False)
        out.print(f"  local error (fed the reference's inputs): max rel {first.local.max_rel:.2e}, SQNR "
                  f"{_db(first.local.sqnr_db)} dB — "
                  + ("bad by itself" if not first.local.passed else "within tolerance alone: it inherits upstream "
                     "error"), markup=False)
    inexact = [e for e in a.ranked() if e.local.max_rel > 0]
    table = Table(title=f"{min(top, len(inexact))} layers with the largest local error "
                        f"({a.candidate} vs {a.reference}, {a.precision})")
    for col in ("#", "node", "op", "reference", "acc max rel", "acc SQNR", "local max rel", "local SQNR",
                "output SQNR alone"):
        table.add_column(col, justify="right" if col not in ("node", "op", "reference") else "left")
    for e in inexact[:top]:
        style = "red" if not e.local.passed else ""
        table.add_row(str(e.position), e.node, e.op, e.reference, f"{e.accumulated.max_rel:.2e}",
                      _db(e.accumulated.sqnr_db), f"{e.local.max_rel:.2e}", _db(e.local.sqnr_db), _db(e.impact_db),
                      style=style)
    out.print(table)
    if len(inexact) < len(a.layers):
        out.print(f"{len(a.layers) - len(inexact)} aligned tensors are exact locally (not listed)", markup=False)
    out.print(f"{'perturbation':>12}: {a.perturbation['note']}", markup=False)
    for d in a.final:
        out.print(f"{'final':>12}: {d.name}: max rel {d.max_rel:.2e}, cosine {d.cosine:.6f}, SQNR "
                  f"{_db(d.sqnr_db)} dB", markup=False)
    if a.keep_float() and a.precision != "fp32":
        out.print(f"{'keep float':>12}: --keep-float {','.join(a.keep_float())}  (the weighted layers whose error "
                  f"costs the output most)", markup=False)
    for note in a.notes:
        out.print(f"note: {note}", markup=False)


def run_debug(reference, candidate, *, backend_a, backend_b, samples, run_batch, data, seed, precision, threads,
              top, extract, plot, json_path, impact, weights, shape, **preprocess) -> None:
    from ..harness.plot import plot_debug
    from ..jobs.debug import extract_reproducer

    with err.status("debugging", spinner="dots") as status:
        report = api.debug(reference, candidate, weights=weights, shape=shape, backend_a=backend_a, backend_b=backend_b,
                           samples=samples, run_batch=run_batch, data=data, seed=seed, precision=precision,
                           threads=threads, impact=impact, progress=status.update, **preprocess)
    state = report.state
    print_debug(report, top)
    outputs = []
    result = report.to_dict()
    if extract is not None and report.first is not None:
        info = extract_reproducer(report, state, extract)
        result["extract"] = info
        outputs.append(("--extract", extract / "subgraph.onnx"))
        out.print(f"{'reproducer':>12}: {extract}/ subgraph.onnx ({len(info['nodes'])} nodes: "
                  f"{', '.join(info['nodes'][:6])}{' …' if len(info['nodes']) > 6 else ''}), inputs.npz, "
                  f"reference.npz, candidate.npz", markup=False)
    elif extract is not None:
        out.print(f"{'reproducer':>12}: nothing diverged, nothing extracted", markup=False)
    if plot:
        plot_debug(report, plot)
        outputs.append(("--plot", plot))
    write_report(json_path, result, inputs=api.current().inputs, outputs=outputs, threads=threads)
    typer.echo(report.summary())
    if not report.passed:
        raise typer.Exit(1)


@verb(epilog=examples(
    "deploy debug resnet18 resnet18.onnx",
    "deploy debug net.onnx net.int8.onnx --precision int8 --top 5 --plot debug.png",
    "deploy debug net.onnx net.fused.onnx --extract repro/ --json debug.json"))
def debug(
    reference: Annotated[str, typer.Argument(help="Reference: a model spec or .onnx file.")],
    candidate: Annotated[str, typer.Argument(help="Candidate: an .onnx file (its intermediate tensors are read).")],
    weights: Weights = None,
    shape: Shape = None,
    backend_a: Annotated[str | None, typer.Option("--backend-a", help="Backend for an ONNX reference (ort-cpu, "
                                                  "ov-cpu, ort-cuda); a PyTorch reference is read on "
                                                  "torch-cpu.")] = None,
    backend_b: Annotated[str | None, typer.Option("--backend-b", help="Backend for the candidate (ort-cpu, "
                                                  "ov-cpu, ort-cuda).")] = None,
    precision: Annotated[str, typer.Option(help="Tolerance preset each tensor is judged by: fp32, fp16, "
                                           "int8 (as `deploy check`).")] = "fp32",
    data: Data = "auto",
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
    samples: Samples = 8,
    run_batch: RunBatch = None,
    seed: Annotated[int, typer.Option(help="Seed for random inputs.")] = 0,
    top: Annotated[int, typer.Option("--top", help="Rows in the table of the worst layers.")] = 10,
    impact: Annotated[int, typer.Option("--impact", help="For this many weighted layers (worst local SQNR first), "
                                        "also measure what their error alone costs the output (0: skip).")] = 64,
    extract: Annotated[Path | None, typer.Option("--extract", help="Write the smallest subgraph around the first "
                                                 "divergence to this folder, with its recorded inputs and both "
                                                 "outputs (.npz): a bug report needs nothing else.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG of SQNR against depth, accumulated and "
                                              "local.")] = None,
    threads: Threads = None,
    json_path: Json = None,
) -> None:
    """Find where two artifacts diverge: every aligned intermediate tensor, two error views, the first divergence.

    Accumulated error: both run from the same inputs. Local error: the candidate's layer fed the
    reference's own values at its inputs — a layer bad by itself is told from one that inherits upstream
    error. Exit 0 when no aligned tensor breaks the precision's tolerance, 1 naming the first that does,
    2 when nothing aligns.
    """
    if extract is not None and not extract.parent.is_dir():
        raise BadInputError(f"--extract {extract}: folder {extract.parent} does not exist")
    if extract is not None and extract.exists() and not extract.is_dir():
        raise BadInputError(f"--extract {extract}: a file; give a folder")
    guard([], [("--json", json_path), ("--plot", plot)])
    threads = resolve_threads(threads)
    run_debug(reference, candidate, backend_a=backend_a, backend_b=backend_b, samples=samples, run_batch=run_batch,
              data=data, seed=seed, precision=precision, threads=threads, top=top, extract=extract, plot=plot,
              json_path=json_path, impact=impact, weights=weights, shape=shape, preprocess=preprocess, mean=mean,
              std=std, scale=scale, bgr=bgr, resize=resize, layout=layout, pad=pad, anchor=anchor, interp=interp)
