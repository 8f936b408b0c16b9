"""`deploy build`: ONNX → TensorRT engine with its record; `--dry-run` shows the plan without TensorRT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import api as deploy_api
from .app import err, guard, out, verb, write_report
from .options import Json, examples


def _typing(plan) -> str:
    if plan.strongly_typed:
        return "strongly typed"
    return f"flags {','.join(plan.builder_flags)}" if plan.builder_flags else "weakly typed, no precision flags"


def _print_plan(plan, title: str) -> None:
    rows = [
        ("TensorRT path", f"{plan.api}.x ({'strongly typed' if plan.strongly_typed else 'weakly typed'})"),
        ("file says", plan.graph),
        ("engine computes", plan.precision + ("" if plan.tf32 or plan.precision != "fp32" else " (TF32 off)")),
        ("builder flags", ", ".join(plan.builder_flags) or "none (precision from the graph)"),
        ("converted by", {"fp16": "deploy's fp16 pass", "int8-qdq": "deploy's Q/DQ pass (--ranges)"}.get(
            plan.convert, "nothing: the file is parsed as it is")),
    ]
    if plan.calibration_tensors:
        rows.append(("calibration cache", f"{plan.calibration_tensors} scales from --ranges (no data read)"))
    for name, shapes in plan.profile.items():
        rows.append((f"profile {name}", shapes.describe()))
    cache = plan.timing_cache
    rows.append(("timing cache", "none" if cache.action == "none" else f"{cache.action} {cache.path}: {cache.reason}"))
    rows.append(("builder", f"workspace {plan.workspace_mib} MiB, optimization level {plan.opt_level}"))
    out.print(title, markup=False)
    for key, value in rows:
        out.print(f"{key:>18}: {value}", markup=False)
    for note in plan.notes:
        out.print(f"note: {note}", markup=False)


@verb(epilog=examples(
    "deploy build resnet18.onnx -o resnet18.engine",
    "deploy build net.int8.onnx -o net.engine --min-batch 1 --opt-batch 8 --max-batch 32 --timing-cache trt.cache",
    "deploy build net.onnx --precision int8 --ranges net.int8.ranges.json -o net.engine",
    "deploy build yolo.onnx --profile images=1x3x320x320:1x3x640x640:1x3x1280x1280 --dry-run --api 10"))
def build(
    model: Annotated[Path, typer.Argument(help="The .onnx file to build (fp32, fp16 or int8 Q/DQ, as `deploy "
                                          "quantize` writes them).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The engine to write (default: MODEL "
                                                "with .engine), with its record MODEL.engine.json beside it.")] = None,
    precision: Annotated[str, typer.Option(help="auto (what the file carries: Q/DQ → int8, float16 → fp16, "
                                           "else fp32), fp32, fp16 or int8. TensorRT 11: fp16/int8 of a float file "
                                           "convert it with deploy's passes first; TensorRT 10: builder "
                                           "flags.")] = "auto",
    ranges: Annotated[Path | None, typer.Option("--ranges", help="Our ranges table (OUT.ranges.json from "
                                                "`deploy quantize`): int8 scales for --precision int8 of a float "
                                                "file.")] = None,
    min_batch: Annotated[int, typer.Option("--min-batch", help="Smallest batch of a dynamic batch dim.")] = 1,
    opt_batch: Annotated[int | None, typer.Option("--opt-batch", help="The batch TensorRT tunes kernels for "
                                                  "(default: --max-batch).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch of a dynamic batch dim.")] = 8,
    profile: Annotated[list[str] | None, typer.Option("--profile", help="Per-input shapes NAME=MIN:OPT:MAX "
                                                      "(dims as 1x3x640x640), for inputs whose other dims are "
                                                      "dynamic; one per input.")] = None,
    timing_cache: Annotated[Path | None, typer.Option("--timing-cache", help="Timing cache file: created, or "
                                                      "reused; one from another GPU or TensorRT version is "
                                                      "rebuilt with a warning.")] = None,
    workspace: Annotated[int, typer.Option("--workspace", help="Builder workspace limit, MiB.")] = 4096,
    opt_level: Annotated[int, typer.Option("--opt-level", help="TensorRT builder optimization level 0–5 "
                                           "(higher: longer build, maybe faster engine).")] = 3,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="Allow TF32 math in fp32 layers (TensorRT's "
                                       "default; off here so fp32 stays exact).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what TensorRT would be handed and exit; "
                                          "needs no TensorRT or GPU.")] = False,
    api: Annotated[int | None, typer.Option("--api", help="With --dry-run: plan for TensorRT 10 or 11 (default: "
                                            "the installed one, else 11).")] = None,
    json_path: Json = None,
) -> None:
    """Build a TensorRT engine from an ONNX file, with an optimization profile, a timing cache and a record.

    The record (ENGINE.json) holds the TensorRT, CUDA and driver versions, the GPU and its compute
    capability, the ONNX file's and the timing cache's sha256 and every build option: `deploy check`/`bench`
    refuse an engine from another TensorRT or GPU with one line, instead of TensorRT's deserialization error.
    Exits 3 when TensorRT, pycuda/torch-CUDA or a GPU is missing (`deploy backends` says which).
    """
    output = output or model.with_suffix(".engine")
    inputs = [("MODEL", model), ("--ranges", ranges)]
    guard([], [("--json", json_path)])
    options = dict(precision=precision, ranges=ranges, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                   profile=profile, timing_cache=timing_cache, workspace=workspace, opt_level=opt_level, tf32=tf32)
    if dry_run:
        plan = deploy_api.build(model, output, dry_run=True, api=api, **options)
        _print_plan(plan, f"{model}: the build for TensorRT {plan.api} (dry run: nothing built)")
        write_report(json_path, {"dry_run": True, "plan": plan.to_dict()}, inputs=inputs)
        typer.echo(f"PLANNED {model} for TensorRT {plan.api}: {plan.precision}, {_typing(plan)}")
        return
    with err.status(f"building {output} with TensorRT (timing kernels)", spinner="dots") as status:
        result = deploy_api.build(model, output, api=api, progress=status.update, **options)
    _print_plan(result.plan, f"{output}: built from {model}")
    for warning in result.warnings:
        err.print(f"warning: {warning}", markup=False)
    record = result.record
    out.print(f"{'record':>18}: {result.sidecar} (TensorRT {record.tensorrt}, {record.gpu}, compute capability "
              f"{record.compute_capability}, build {record.build_seconds:.1f} s)", markup=False)
    write_report(json_path, result.to_dict(), inputs=inputs, outputs=[("-o", output)])
    typer.echo(result.summary())
