"""Verbs that read and list: `deploy zoo`, `deploy inspect`, `deploy backends`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..errors import DeployError
from .app import err, guard, load, out, spec_inputs, verb, write_report
from .options import Json, Shape, Weights, examples


@verb(epilog=examples("deploy zoo", "deploy zoo 'mobilenet*' --json zoo.json"))
def zoo(
    pattern: Annotated[str, typer.Argument(help="Glob over names, e.g. 'resnet*'.")] = "*",
    json_path: Json = None,
) -> None:
    """List the zoo: name, family, parameters, GFLOPs (2·MACs, one sample) and input size."""
    from ..artifacts.files import write_json
    from ..jobs.inspection import count_model
    from ..models import get_model_entry, list_models

    guard([], [("--json", json_path)])
    names = list_models(pattern)
    if not names:
        raise DeployError(f"no zoo model matches '{pattern}' (`deploy zoo` lists them all)")
    rows = []
    for name in names:
        entry = get_model_entry(name)
        params, flops = count_model(entry.factory, entry.input_shape)
        rows.append({"name": name, "family": entry.family, "params": params, "gflops": round(flops / 1e9, 3),
                     "input_shape": list(entry.input_shape), "num_classes": entry.num_classes,
                     "description": entry.description})
    table = Table(title=f"deploy zoo ({len(rows)} models)")
    for col in ("name", "family", "params", "GFLOPs", "input"):
        table.add_column(col, justify="right" if col in ("params", "GFLOPs") else "left")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params']:,}", f"{r['gflops']:.2f}",
                      "×".join(map(str, r["input_shape"][1:])))
    out.print(table)
    if json_path:
        write_json(json_path, rows)  # a list of models, as before: the zoo is not an artifact report


def _print_engine(artifact, json_path, inputs) -> None:
    """An engine's record: what it was built from, for which TensorRT and GPU, its profile and I/O."""
    from ..artifacts.engine_record import read_sidecar

    record = read_sidecar(artifact.engine_path)
    plan = record.plan
    rows = [("built from", f"{record.onnx} (sha256 {record.onnx_sha256[:12]}…)"),
            ("TensorRT", f"{record.tensorrt} ({'strongly typed' if plan.get('strongly_typed') else 'weakly typed'}"
                         f", {plan.get('precision')}, flags {', '.join(plan.get('builder_flags') or []) or 'none'})"),
            ("GPU", f"{record.gpu} (compute capability {record.compute_capability}), driver {record.driver}, "
                    f"CUDA {record.cuda}"),
            ("built", f"{record.built} in {record.build_seconds:.1f} s by deploy {record.deploy}")]
    rows += [(f"profile {name}", shapes.describe()) for name, shapes in record.profile().items()]
    rows += [(f"output {s.name}", "x".join(map(str, s.shape)) + f" {s.dtype}") for s in record.outputs]
    for key, value in rows:
        out.print(f"{key:>16}: {value}", markup=False)
    write_report(json_path, record.to_dict(), inputs=inputs)


@verb(epilog=examples("deploy inspect resnet50", "deploy inspect resnet50.onnx --no-layers",
                      "deploy inspect path/to/net.py:build --shape 1,3,256,256 --json net.json"))
def inspect(
    model: Annotated[str, typer.Argument(help="Model spec or .onnx file.")],
    weights: Weights = None,
    shape: Shape = None,
    layers: Annotated[bool, typer.Option(help="Print the per-layer table.")] = True,
    json_path: Json = None,
) -> None:
    """Per-layer output shapes, parameters and FLOPs (conv 2·Cin/g·k²·Cout·H·W), op histogram, totals."""
    from ..harness.report import ops_table
    from ..jobs.inspection import inspect_artifact

    inputs = [*spec_inputs("MODEL", model), ("--weights", weights)]
    guard(inputs, [("--json", json_path)])
    artifact = load(model, weights, shape, engines=True)
    if artifact.kind == "engine":
        _print_engine(artifact, json_path, inputs)
        return
    report = inspect_artifact(artifact)
    if layers:
        table = Table(title=f"{report.model} — layers")
        for col in ("#", "layer", "op", "output shape", "params", "MFLOPs"):
            table.add_column(col, justify="right" if col in ("#", "params", "MFLOPs") else "left")
        for i, layer in enumerate(report.layers):
            params = f"{layer.params:,}" if layer.params else ""
            mflops = f"{layer.flops / 1e6:.1f}" if layer.flops else ""
            table.add_row(str(i), layer.name, layer.op, "×".join(map(str, layer.output_shape)), params, mflops)
        out.print(table)
    out.print(ops_table(f"{report.model} — {'modules' if report.kind == 'torch' else 'nodes'} by type",
                        {"count": report.ops}))
    out.print(f"{report.model}: {report.params:,} parameters, {report.flops / 1e9:.3f} GFLOPs per sample "
              f"at input {'×'.join(map(str, report.input_shape[1:]))}", markup=False)
    write_report(json_path, report.to_dict(), inputs=inputs)


@verb(epilog=examples("deploy backends", "deploy backends --json backends.json"))
def backends(json_path: Json = None) -> None:
    """List each backend: what it runs, on which device, and why it is unavailable here when it is."""
    from rich.markup import escape

    from ..artifacts.files import write_json
    from ..backends import backend_status

    guard([], [("--json", json_path)])
    with err.status("probing backends", spinner="dots"):
        statuses = backend_status()
    table = Table(title="backends")
    for col in ("backend", "runs", "device", "available", "detail"):
        table.add_column(col)
    for s in statuses:
        runs = "PyTorch models" if s.runs == "torch" else "ONNX files, engines" if s.name == "trt" else "ONNX files"
        table.add_row(s.name, runs, s.device,
                      "[green]yes[/green]" if s.available else "[red]no[/red]", escape(s.detail))
    out.print(table)
    if json_path:
        write_json(json_path, [s.__dict__ for s in statuses])
