"""`deploy fuse`: the exact passes (conv-BN fusion, structural reparameterization), proven."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
from .options import Data, Dynamic, Json, OldInputs, Samples, Shape, Threads, Weights, examples, renamed


@verb(epilog=examples(
    "deploy fuse repvgg_a0 -o repvgg_a0.onnx",
    "deploy fuse someone_elses_train_form.onnx -o fused.onnx",
    "deploy fuse net.onnx -o fused.onnx --passes onnx_fuse_bn --json fuse.json"))
def fuse(
    model: Annotated[str, typer.Argument(help="Model spec (torch stage, export, ONNX stage) or .onnx file "
                     "(ONNX stage).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The fused .onnx file to write.")],
    passes: Annotated[str | None, typer.Option(help="Comma-separated passes, torch stage first. Default: "
                      "reparameterize,onnx_reparam for models, onnx_reparam,onnx_fuse_hardswish for ONNX files. "
                      "Passes: fuse_conv_bn, reparameterize (torch); onnx_fuse_bn, onnx_reparam, "
                      "onnx_fuse_hardswish (ONNX).")] = None,
    weights: Weights = None,
    shape: Shape = None,
    dynamic: Dynamic = None,
    verify: Annotated[bool, typer.Option(help="Check the result against the original (fp32 tolerance).")] = True,
    tol: Annotated[list[str] | None, typer.Option("--tol", help="Override a threshold of the proof, as `deploy "
                   "check --tol`: max_rel=1e-4, logits:max_rel=2e-5. The default is already the larger of 1e-5 "
                   "and twice the reference's own error (float64 for a model, ONNX Runtime's optimized vs "
                   "unoptimized run for an ONNX file).")] = None,
    data: Data = "auto",
    samples: Samples = 8,
    threads: Threads = None,
    json_path: Json = None,
    old_inputs: OldInputs = None,
) -> None:
    """Exact passes: conv-BN fusion and structural reparameterization, proven on real photos.

    The ONNX stage merges any sum of branches that are affine in one tensor (RepVGG, ACNet, DBB, MobileOne
    and whatever else an exporter wrote) into one Conv, by measuring the branches and certifying the result;
    what it cannot merge it reports with the reason. The last line is PASSED or FAILED; exits 1, writing
    nothing, when the result is not equivalent to the original within max relative error 1e-5.
    """
    from ..harness.report import ops_table, print_compare

    samples = renamed(samples, old_inputs, "--inputs", default=8)
    guard([], [("--json", json_path)])
    threads = resolve_threads(threads)
    with err.status("fusing", spinner="dots") as status:
        try:
            report = api.fuse(model, output, weights=weights, shape=shape, passes=passes, dynamic=dynamic,
                              verify=verify, data=data, samples=samples, tol=tol, threads=threads,
                              progress=status.update)
        except CheckFailedError as error:
            show_failed_check(error, json_path, inputs=api.current().inputs, threads=threads)
            raise
    inputs = api.current().inputs
    ops = lambda counts: {k: v for k, v in counts.items() if k not in ("nodes", "params")}  # noqa: E731
    out.print(ops_table(f"{model} → {output}: nodes by op type", {"before": ops(report.before),
                                                                    "after": ops(report.after)}))
    table = Table(title="passes")
    for col in ("pass", "stage", "changed", "sites", "skipped", "seconds"):
        table.add_column(col, justify="left" if col in ("pass", "stage", "changed") else "right")
    for r in report.passes:
        table.add_row(r["name"], r["stage"], "yes" if r["changed"] else "no", str(len(r["sites"])),
                      str(len(r["skipped"])), f"{r['seconds']:.2f}")
    out.print(table)
    for r in report.passes:
        for warning in r["warnings"]:
            out.print(f"warning: {r['name']}: {warning}", markup=False)
        reasons: dict[str, int] = {}
        for site in r["skipped"]:
            reasons[site["what"]] = reasons.get(site["what"], 0) + 1
        for why, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            out.print(f"{r['name']}: {count} site(s) left: {why}", markup=False)
    out.print(f"parameters: {report.before['params']:,} → {report.after['params']:,}; "
              f"nodes: {report.before['nodes']} → {report.after['nodes']}; {report.seconds:.2f} s", markup=False)
    if report.check:
        print_compare(report.check, out)
    write_report(json_path, report.to_dict(), inputs=inputs, outputs=[("-o", output)], threads=threads)
    typer.echo(report.summary())
