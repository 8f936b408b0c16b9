"""`deploy prune`: structured channel pruning to a ratio, a MACs budget or a measured latency."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import api, err, finish, guard, out, resolve_threads, verb
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
    Samples,
    Scale,
    Shape,
    Std,
    Threads,
    Weights,
    examples,
)


@verb(epilog=examples(
    "deploy prune resnet50 -o r50.pruned.onnx --latency 0.5 --backend ort-cpu --batch 8",
    "deploy prune resnet18 -o r18.pruned.onnx --ratio 0.3 --round-to 8",
    "deploy prune net.py:build -o net.pruned.onnx --shape 1,3,224,224 -w net.pt --macs 0.5 --finetune ./images",
    "deploy check resnet18 r18.pruned.onnx -w r18.pruned.safetensors   # reload: the record is replayed"))
def prune(
    model: Annotated[str, typer.Argument(help="PyTorch model spec (zoo name, module:factory, file.py:factory).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The pruned .onnx to write; the pruned weights "
                      "and the pruning record go beside it as OUT.safetensors.")],
    ratio: Annotated[float | None, typer.Option("--ratio", help="Target: remove this fraction of the channels of "
                     "every dependency group (0 < R < 1).")] = None,
    macs: Annotated[float | None, typer.Option("--macs", help="Target: keep this fraction of the MACs.")] = None,
    latency: Annotated[float | None, typer.Option("--latency", help="Target: keep this fraction of the latency "
                       "measured on --backend at --batch (candidates are exported and timed, interleaved with "
                       "the original).")] = None,
    backend: Annotated[str, typer.Option(help="Backend the latency is measured on (target and report).")] = "ort-cpu",
    batch: Annotated[int, typer.Option(help="Batch size the latency is measured at.")] = 8,
    round_to: Annotated[str, typer.Option("--round-to", help="Keep channel counts multiples of this; auto "
                        "measures the multiple the backend runs fast (cached per machine).")] = "auto",
    importance: Annotated[str, typer.Option(help="Channel importance: l2 (group magnitude), l1, bn (|γ|), "
                          "activation (mean |activation| on --data).")] = "l2",
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Layers to leave whole, by name or glob "
                      "(repeatable): every group touching them keeps its channels.")] = None,
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
    samples: Samples = 64,
    recalibrate: Annotated[bool, typer.Option("--recalibrate-bn/--no-recalibrate-bn", help="Re-estimate BN "
                           "statistics on --data after pruning (no labels needed).")] = True,
    finetune: Annotated[str | None, typer.Option("--finetune", help="Recover by distillation from the unpruned "
                        "model on this data (a folder of images or an .npz; labels used when the .npz has them).")
                        ] = None,
    epochs: Annotated[int | None, typer.Option(help="Distillation epochs (default: about 20k sample steps).")] = None,
    temperature: Annotated[float, typer.Option(help="Distillation temperature T (Hinton 2015).")] = 4.0,
    eval_data: Annotated[str | None, typer.Option("--eval", help="Labelled held-out .npz for accuracy at each "
                         "stage (default: agreement with the original on held-out photos).")] = None,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Time the result against the original "
                       "on --backend (always on for --latency).")] = True,
    weights: Weights = None,
    shape: Shape = None,
    threads: Threads = None,
    json_path: Json = None,
) -> None:
    """Remove whole channels: smaller, and measured faster, with the accuracy recovered without labels.

    Channel dependency groups (residual adds, concats, depthwise convs, SE gates, the classifier's input)
    come from a torch.fx trace; what the analysis does not understand is left whole, never guessed. One
    target: --ratio, --macs or --latency. Then BN statistics are re-estimated on --data, and with
    --finetune the pruned net is distilled from the original. Writes OUT.onnx (verified against the pruned
    model in ONNX Runtime) and OUT.safetensors (weights + pruning record: `MODEL -w OUT.safetensors`
    rebuilds it, no pickle). A target that cannot be met prints the closest reached, writes nothing, exit 1.
    """
    from ..jobs.prune import safetensors_path_for

    guard([], [("--json", json_path)])
    threads = resolve_threads(threads)
    with err.status("pruning", spinner="dots") as status:
        report = api.prune(
            model, output, ratio=ratio, macs=macs, latency=latency, importance=importance, round_to=round_to,
            ignore=ignore, backend=backend, batch=batch, data=data, samples=samples, recalibrate=recalibrate,
            finetune=finetune, epochs=epochs, temperature=temperature, eval_data=eval_data, measure=measure,
            weights=weights, shape=shape, threads=threads, progress=status.update, preprocess=preprocess,
            mean=mean, std=std, scale=scale, bgr=bgr, resize=resize, layout=layout, pad=pad, anchor=anchor,
            interp=interp)
    inputs = api.current().inputs
    outputs = [("-o", output), ("weights", safetensors_path_for(output))]
    _print(report)
    finish(report, json_path, inputs=inputs, outputs=outputs, threads=threads)


def _print(report) -> None:
    o = report.outcome
    groups = Table(title=f"{report.model}: channels per dependency group ({report.target}; {o.method}, "
                         f"multiples of {o.round_to})")
    for col in ("group", "layers", "before", "after"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    rows = report.groups_table()
    shown = rows if len(rows) <= 24 else rows[:12] + rows[-12:]
    for r in shown:
        groups.add_row(r["group"], str(r["layers"]), str(r["channels_before"]), str(r["channels_after"]))
    if len(rows) > len(shown):
        groups.caption = f"{len(rows) - len(shown)} more groups in --json"
    out.print(groups)
    frozen = [g for g in o.graph.groups if g.frozen and g.producers and g.frozen != ["a graph output"]]
    if frozen:
        out.print(f"kept whole ({len(frozen)} groups): " + "; ".join(f"{g.describe()}: {g.frozen[0]}"
                                                                  for g in frozen[:4]))
    summary = Table(title="before → after")
    for col in ("", "before", "after", "kept"):
        summary.add_column(col, justify="left" if not col else "right")
    summary.add_row("MACs", f"{o.macs_before / 1e6:,.1f} M", f"{o.macs_after / 1e6:,.1f} M", f"{o.macs_kept:.1%}")
    summary.add_row("params", f"{o.params_before:,}", f"{o.params_after:,}", f"{o.params_after / o.params_before:.1%}")
    if o.latency:
        summary.add_row(f"latency ({o.latency.label})", "1.00×", f"{o.latency.latency_ratio:.3f}×",
                        f"95 % CI [{o.latency.low:.3f}, {o.latency.high:.3f}]")
    if report.original_accuracy is not None:
        summary.add_row("accuracy (original)", f"{report.original_accuracy:.2f} %", "", "")
    for s in report.stages:
        parts = [f"{s.accuracy:.2f} % acc" if s.accuracy is not None else "",
                 f"{s.agreement:.1f} % agree" if s.agreement is not None else "",
                 f"{s.sqnr_db:.1f} dB" if s.sqnr_db is not None else ""]
        value = ", ".join(p for p in parts if p) or "-"
        summary.add_row(f"after: {s.name}", "", value, f"{s.seconds:.1f} s")
    out.print(summary)
    if report.eval_source:
        out.print(f"scored on: {report.eval_source}")
    if report.export_check:
        out.print(f"export: {report.export_check}")
    for note in report.notes + o.notes:
        out.print(f"note: {note}")
    if report.written:
        out.print("wrote: " + ", ".join(report.written))
