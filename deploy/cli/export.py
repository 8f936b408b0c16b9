"""`deploy export`: torch → ONNX, checked, simplified, verified against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CheckFailedError
from .app import (
    api,
    err,
    guard,
    out,
    resolve_threads,
    show_failed_check,
    verb,
    write_report,
)
from .options import (
    Bgr,
    Data,
    Dynamic,
    Interp,
    Json,
    Layout,
    LetterboxAnchor,
    Mean,
    OldInputs,
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
    renamed,
)


@verb(epilog=examples(
    "deploy export resnet18 -o resnet18.onnx",
    "deploy export resnet18 -o r18.onnx --dynamic batch,height,width --opset 13",
    "deploy export r18.int8.onnx -o r18.int8.xml                      # an OpenVINO IR of a proven file",
    "deploy export path/to/pkg/resnet.py:resnet50(num_classes=10) -o r50.onnx --shape 1,3,224,224 -w ckpt.pt"))
def export(
    model: Annotated[str, typer.Argument(help="Model spec (zoo name, module:factory, file.py:factory), or an "
                                         ".onnx file to convert to --opset (checked equal in ONNX Runtime).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .onnx file to write.")],
    weights: Weights = None,
    shape: Shape = None,
    dynamic: Dynamic = None,
    static: Annotated[bool, typer.Option("--static", help="Fix every dim (the same as --dynamic none; default: "
                                         "dynamic batch).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (TorchScript exporter; dynamo writes 18).")] = 17,
    simplify: Annotated[bool, typer.Option(help="Simplify with onnxsim.")] = True,
    exporter: Annotated[str, typer.Option(help="torchscript (fast, honours --opset) or dynamo.")] = "torchscript",
    verify: Annotated[bool, typer.Option(help="Check ONNX Runtime against PyTorch after export.")] = True,
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
    samples: Samples = 4,
    threads: Threads = None,
    format: Annotated[str, typer.Option("--format", help="onnx, openvino (an OpenVINO IR, -o NAME.xml + NAME.bin: "
                      "written by OpenVINO's converter from the proven ONNX file and checked equal to it on ov-cpu), "
                      "or auto (by -o's suffix).")] = "auto",
    json_path: Json = None,
    old_inputs: OldInputs = None,
) -> None:
    """Export to ONNX (checked, shape-inferred, simplified, one file) and verify it in ONNX Runtime.

    The last line is PASSED or FAILED (or EXPORTED … not verified with --no-verify). Exits 1, writing no
    file, when ONNX Runtime and PyTorch disagree beyond fp32 tolerance (max relative error 1e-5, judged
    against a float64 evaluation of the model).
    """
    from ..harness.report import fmt_bytes, ops_table

    samples = renamed(samples, old_inputs, "--inputs", default=4)
    guard([], [("--json", json_path)])
    threads = resolve_threads(threads)
    with err.status("exporting", spinner="dots") as status:
        try:
            report = api.export(model, output, weights=weights, shape=shape, dynamic=dynamic, static=static,
                                opset=opset, simplify=simplify, exporter=exporter, verify=verify, data=data,
                                samples=samples, threads=threads, format=format, progress=status.update,
                                preprocess=preprocess, mean=mean, std=std, scale=scale, bgr=bgr, resize=resize,
                                layout=layout, pad=pad, anchor=anchor, interp=interp)
        except CheckFailedError as error:
            show_failed_check(error, json_path, inputs=api.current().inputs, threads=threads)
            raise
    inputs = api.current().inputs
    out.print(ops_table(f"{output} — nodes by op type", {"nodes": report.nodes_by_op}))
    free = ", ".join(f"{name} dims {sorted(d)}" for name, d in report.dynamic_axes.items()) or "none"
    rows = [
        ("file", f"{output} ({fmt_bytes(report.file_bytes)}{', external data' if report.external_data else ''})"),
        ("exporter", f"{report.exporter}, opset {report.opset}, free axes: {free}, "
                     f"{'simplified' if report.simplified else 'not simplified'}"),
        ("parameters", f"{report.parameters:,}"),
        ("time", f"export {report.export_seconds:.2f} s, simplify {report.simplify_seconds:.2f} s, "
                 f"verify {report.verify_seconds:.2f} s"),
    ]
    if report.check:
        worst = report.check.worst()
        rows.append(("max rel error", f"{worst.max_rel:.2e} vs PyTorch on {report.check.data} "
                                      f"(cosine {worst.cosine:.6f})"))
    for key, value in rows:
        out.print(f"{key:>14}: {value}", markup=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    if report.ir is not None:
        ir = report.ir
        out.print(f"{'OpenVINO IR':>14}: {ir['xml']} ({fmt_bytes(ir['bytes']['xml'])}) + {ir['bin']} "
                  f"({fmt_bytes(ir['bytes']['bin'])}), openvino {ir['openvino']}, converted in "
                  f"{ir['convert_seconds']:.2f} s", markup=False)
        out.print(f"{'sha256':>14}: xml {ir['sha256']['xml'][:16]}…, bin {ir['sha256']['bin'][:16]}…", markup=False)
    write_report(json_path, report.to_dict(), inputs=inputs, outputs=[("-o", output)], threads=threads)
    typer.echo(report.summary())
