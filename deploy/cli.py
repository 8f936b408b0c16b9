"""The `deploy` command line: one function per verb; each parses, delegates and renders.

Exit codes: 0 ok · 1 a check failed · 2 bad input or usage · 3 a needed dependency or device is missing ·
4 internal error.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, BadInputError, CheckFailedError, DeployError

app = typer.Typer(
    name="deploy",
    help="Make PyTorch vision models fast to serve without changing what they compute.\n\n"
         "A MODEL is a zoo name (resnet18; see `deploy zoo`), package.module:factory, "
         "path/to/file.py:factory, or an .onnx file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Pipes and CI logs get wide tables instead of rich's 80-column default, so numbers are never cut.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 170)
err = Console(stderr=True, highlight=False)

# Shared option types -------------------------------------------------------------------------------
WeightsOpt = Annotated[str | None, typer.Option("--weights", "-w", help="Checkpoint to load: .pt/.pth "
                       "(weights-only unpickling) or .safetensors; torchvision checkpoints fit the zoo.")]
ShapeOpt = Annotated[str | None, typer.Option("--shape", help="Input shape, e.g. 1,3,224,224 (default: the "
                     "zoo entry's; required for user models).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")]
DataOpt = Annotated[str, typer.Option("--data", help="Inputs: 'photos' (sample photos bundled with scikit-image "
                    "and scikit-learn, ImageNet preprocessing), a folder of images, or 'random' (seeded noise). "
                    "'auto': photos for image inputs, else random.")]


def handle_errors(fn):
    """Turn our errors into one line on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CheckFailedError as error:
            typer.echo(str(error), err=False)
            raise typer.Exit(error.exit_code) from None
        except DeployError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except OSError as error:  # unreadable/unwritable paths, full disks
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Exception as error:
            if os.environ.get("DEPLOY_DEBUG"):
                raise
            text = (str(error).strip().splitlines() or [""])[0][:240]
            typer.echo(f"error: internal error {type(error).__name__}: {text} (a bug in deploy; DEPLOY_DEBUG=1 "
                       f"shows the traceback)", err=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def _load(spec: str, weights: str | None = None, shape: str | None = None):
    from .spec import load_artifact, parse_shape

    with err.status(f"loading {spec}", spinner="dots"):
        return load_artifact(spec, weights=weights, shape=parse_shape(shape))


def _show_failed_check(error: CheckFailedError, json_path: Path | None) -> None:
    """Before a failed export/fuse exits 1: the comparison table, and the JSON report when asked."""
    from .report import print_compare, write_json

    failed = getattr(error, "report", None)
    if failed is not None and failed.check is not None:
        print_compare(failed.check, out)
        if json_path:
            write_json(json_path, failed.to_dict())


def _data_arg(data: str, artifact) -> str | None:
    if data == "random":
        return None
    if data == "auto":
        spec = artifact.inputs[0]
        image_like = len(artifact.inputs) == 1 and len(spec.shape) == 4 and spec.shape[1] in (1, 3)
        return "photos" if image_like else None
    return data


def _finish(report, json_path: Path | None) -> None:
    """The end of a judging verb: the JSON report when asked, the one-line verdict, exit 1 when not passed."""
    from .report import write_json

    if json_path:
        write_json(json_path, report.to_dict())
    typer.echo(report.summary())
    if not report.passed:
        raise typer.Exit(1)


# Verbs -----------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def zoo(
    pattern: Annotated[str, typer.Argument(help="Glob over names, e.g. 'resnet*'.")] = "*",
    json_path: JsonOpt = None,
) -> None:
    """List the zoo: name, family, parameters, GFLOPs (2·MACs, one sample) and input size."""
    from .inspection import count_model
    from .models import get_model_entry, list_models
    from .report import write_json

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
        write_json(json_path, rows)


@app.command()
@handle_errors
def inspect(
    model: Annotated[str, typer.Argument(help="Model spec or .onnx file.")],
    weights: WeightsOpt = None,
    shape: ShapeOpt = None,
    layers: Annotated[bool, typer.Option(help="Print the per-layer table.")] = True,
    json_path: JsonOpt = None,
) -> None:
    """Per-layer output shapes, parameters and FLOPs (conv 2·Cin/g·k²·Cout·H·W), op histogram, totals."""
    from .inspection import inspect_artifact
    from .report import ops_table, write_json

    artifact = _load(model, weights, shape)
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
    if json_path:
        write_json(json_path, report.to_dict())


@app.command()
@handle_errors
def export(
    model: Annotated[str, typer.Argument(help="Model spec (zoo name, module:factory, file.py:factory).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .onnx file to write.")],
    weights: WeightsOpt = None,
    shape: ShapeOpt = None,
    static: Annotated[bool, typer.Option("--static", help="Fix the batch dim (default: dynamic batch).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (TorchScript exporter; dynamo writes 18).")] = 17,
    simplify: Annotated[bool, typer.Option(help="Simplify with onnxsim.")] = True,
    exporter: Annotated[str, typer.Option(help="torchscript (fast, honours --opset) or dynamo.")] = "torchscript",
    verify: Annotated[bool, typer.Option(help="Check ONNX Runtime against PyTorch after export.")] = True,
    data: DataOpt = "auto",
    samples: Annotated[int, typer.Option("--inputs", help="Samples for the verification run.")] = 4,
    json_path: JsonOpt = None,
) -> None:
    """Export to ONNX (checked, shape-inferred, simplified, one file) and verify it in ONNX Runtime.

    Exits 1, writing no file, when ONNX Runtime and PyTorch disagree beyond fp32 tolerance (max relative
    error 1e-5).
    """
    from .export import export_onnx
    from .report import fmt_bytes, ops_table, write_json

    artifact = _load(model, weights, shape)
    with err.status("exporting", spinner="dots") as status:
        try:
            report = export_onnx(artifact, output, opset=opset, dynamic_batch=not static, simplify=simplify,
                                 exporter=exporter, verify=verify, verify_samples=samples,
                                 verify_data=_data_arg(data, artifact),
                                 progress=lambda msg: status.update(msg))
        except CheckFailedError as error:
            _show_failed_check(error, json_path)
            raise
    out.print(ops_table(f"{output} — nodes by op type", {"nodes": report.nodes_by_op}))
    rows = [
        ("file", f"{output} ({fmt_bytes(report.file_bytes)}{', external data' if report.external_data else ''})"),
        ("exporter", f"{report.exporter}, opset {report.opset}, "
                     f"{'dynamic' if report.dynamic_batch else 'static'} batch, "
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
    if json_path:
        write_json(json_path, report.to_dict())
    typer.echo(report.check.summary() if report.check else f"EXPORTED {output} (not verified)")


@app.command()
@handle_errors
def fuse(
    model: Annotated[str, typer.Argument(help="Model spec (torch stage, export, ONNX stage) or .onnx file "
                     "(ONNX stage).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The fused .onnx file to write.")],
    passes: Annotated[str | None, typer.Option(help="Comma-separated passes, torch stage first. Default: "
                      "reparameterize,onnx_reparam for models, onnx_reparam for ONNX files. Passes: "
                      "fuse_conv_bn, reparameterize (torch); onnx_fuse_bn, onnx_reparam (ONNX).")] = None,
    weights: WeightsOpt = None,
    shape: ShapeOpt = None,
    verify: Annotated[bool, typer.Option(help="Check the result against the original (fp32 tolerance).")] = True,
    data: DataOpt = "auto",
    samples: Annotated[int, typer.Option("--inputs", help="Samples for the check.")] = 8,
    json_path: JsonOpt = None,
) -> None:
    """Exact passes: conv-BN fusion and structural reparameterization, proven on real photos.

    The ONNX stage merges any sum of branches that are affine in one tensor (RepVGG, ACNet, DBB, MobileOne
    and whatever else an exporter wrote) into one Conv, by measuring the branches and certifying the result;
    what it cannot merge it reports with the reason. Exits 1, writing nothing, when the result is not
    equivalent to the original within max relative error 1e-5.
    """
    from .fuse import fuse_artifact, parse_passes
    from .report import ops_table, print_compare, write_json

    artifact = _load(model, weights, shape)
    names = parse_passes(passes, artifact.kind)
    with err.status("fusing", spinner="dots") as status:
        try:
            report = fuse_artifact(artifact, output, passes=names, verify=verify, samples=samples,
                                   data=_data_arg(data, artifact), progress=lambda msg: status.update(msg))
        except CheckFailedError as error:
            _show_failed_check(error, json_path)
            raise
    ops = lambda counts: {k: v for k, v in counts.items() if k not in ("nodes", "params")}  # noqa: E731
    out.print(ops_table(f"{model} → {output}: nodes by op type", {"before": ops(report.before),
                                                                    "after": ops(report.after)}))
    table = Table(title="passes")
    for col in ("pass", "stage", "sites", "skipped", "seconds"):
        table.add_column(col, justify="left" if col in ("pass", "stage") else "right")
    for r in report.passes:
        table.add_row(r["name"], r["stage"], str(len(r["sites"])), str(len(r["skipped"])), f"{r['seconds']:.2f}")
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
    if json_path:
        write_json(json_path, report.to_dict())
    typer.echo(report.check.summary() if report.check else f"FUSED {output} (not verified)")


@app.command()
@handle_errors
def quantize(
    model: Annotated[str, typer.Argument(help="Model spec or .onnx file (fp32; BatchNormalization is folded "
                     "first).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The quantized .onnx file to write; int8 also "
                      "writes its ranges table beside it (OUT.ranges.json).")],
    precision: Annotated[str, typer.Option(help="int8 (Q/DQ from calibration) or fp16 (float16 weights and "
                         "compute, float32 inputs/outputs).")] = "int8",
    calib: Annotated[str, typer.Option("--calib", help="Calibration data: 'photos' (bundled sample photos), a "
                     "folder of images (recursive), or an .npy/.npz array file.")] = "photos",
    samples: Annotated[int, typer.Option(help="Calibration samples.")] = 128,
    method: Annotated[str, typer.Option(help="Range method: minmax, percentile (99.99), percentile-99.9, "
                      "percentile-99.999, entropy (TensorRT's KL), mse, or auto (all, from one histogram pass; "
                      "the best on held-out data is written).")] = "auto",
    target: Annotated[str, typer.Option(help="ort-cpu (uint8 activations: ONNX Runtime's fast x86 kernels), "
                      "ort-cuda (int8 S8S8), trt (TensorRT explicit quantization: symmetric int8, zero point 0, "
                      "float bias).")] = "ort-cpu",
    keep_float: Annotated[str | None, typer.Option("--keep-float", help="Comma-separated nodes kept in float: "
                          "node names, op types (Gemm), 'first', 'last'.")] = None,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help="Budget in top-1 points (accuracy drop when "
                        "the data has labels, else disagreement with fp32). Missed: per-layer sensitivity, then "
                        "the most sensitive layers stay float until it holds.")] = None,
    min_sqnr: Annotated[float | None, typer.Option("--min-sqnr", help="Budget: mean-centred output SQNR in dB "
                        "against fp32.")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval", help="Held-out data for scoring (default: the "
                         "calibration source, after the calibration samples: disjoint).")] = None,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="Held-out samples.")] = 64,
    batch: Annotated[int | None, typer.Option(help="Samples per run while calibrating and scoring (default 4 "
                     "and 8).")] = None,
    trt_cache: Annotated[Path | None, typer.Option("--trt-cache", help="Also write the ranges as a TensorRT "
                         "(≤ 10) calibration cache.")] = None,
    weights: WeightsOpt = None,
    shape: ShapeOpt = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for ONNX Runtime (default: all).")] = None,
    json_path: JsonOpt = None,
) -> None:
    """Int8 (Q/DQ) or fp16, written into the ONNX graph and scored against fp32 on held-out real data.

    Int8: one pass over the calibration data collects histograms of every tensor the target quantizes;
    each range method is derived from them and, with --method auto, scored on held-out data by top-1
    agreement (accuracy with labelled .npz data) and mean-centred SQNR; the best is written. With a budget
    (--max-drop/--min-sqnr) that is missed, layers are ranked by sensitivity and the most sensitive kept
    in float until it holds; when nothing meets it, the best found is written and the exit code is 1.
    """
    from .quantize import QuantizeOptions, quantize_artifact
    from .report import print_quantize

    artifact = _load(model, weights, shape)
    options = QuantizeOptions(
        precision=precision, target=target, method=method, calib=calib, eval_data=eval_data, samples=samples,
        eval_samples=eval_samples, batch=batch, max_drop=max_drop, min_sqnr=min_sqnr, trt_cache=trt_cache,
        threads=threads, keep_float=tuple(k for k in (keep_float or "").split(",") if k.strip()))
    with err.status("quantizing", spinner="dots") as status:
        report = quantize_artifact(artifact, output, options, progress=lambda msg: status.update(msg))
    print_quantize(report, out)
    _finish(report, json_path)


@app.command()
@handle_errors
def digits(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the ONNX files, the npz splits and the "
                       "report.")] = Path("results/digits"),
    target: Annotated[str, typer.Option(help="Quantization target (see `deploy quantize --help`).")] = "ort-cpu",
    seed: Annotated[int, typer.Option(help="Training seed (each seed trains and caches its own checkpoints).")] = 0,
    json_path: JsonOpt = None,
) -> None:
    """Int8 accuracy on real labelled data: small nets trained here on scikit-learn's digits.

    Trains digits-resnet and digits-repvgg (deterministic, under a minute on a laptop CPU, cached in
    $DEPLOY_CACHE or ~/.cache/deploy), exports them, quantizes them with `deploy quantize` (calibration split;
    method chosen on a slice of the training split) and reports fp32 vs int8 accuracy on the disjoint test
    split; RepVGG also after reparameterization, and with the sensitivity fallback.
    """
    from .accuracy import run_digits_accuracy
    from .report import write_json

    with err.status("digits", spinner="dots") as status:
        rows = run_digits_accuracy(out_dir, seed=seed, target=target, progress=lambda msg: status.update(msg))
    table = Table(title="int8 accuracy on scikit-learn's digits (400 test images, disjoint from calibration)")
    for col in ("model", "form", "fp32 acc", "int8 acc", "drop", "method", "kept in float", "centred SQNR dB"):
        table.add_column(col, justify="left" if col in ("model", "form", "method", "kept in float") else "right")
    for r in rows:
        table.add_row(r.model, r.form, f"{r.fp32_accuracy:.2f} %", f"{r.int8_accuracy:.2f} %", f"{r.drop:+.2f}",
                      r.method, str(len(r.kept_float)) if r.kept_float else "-", f"{r.centred_sqnr_db:.1f}")
    out.print(table)
    if json_path:
        write_json(json_path, [r.to_dict() for r in rows])
    worst = max(rows, key=lambda r: r.drop)
    typer.echo(f"DONE digits: {len(rows)} int8 models; largest drop {worst.drop:+.2f} points ({worst.model}, "
               f"{worst.form})")


@app.command()
@handle_errors
def check(
    reference: Annotated[str, typer.Argument(help="Reference artifact: model spec or .onnx.")],
    candidate: Annotated[str, typer.Argument(help="Candidate artifact: model spec or .onnx.")],
    weights_a: Annotated[str | None, typer.Option("--weights-a", help="Checkpoint for the reference.")] = None,
    weights_b: Annotated[str | None, typer.Option("--weights-b", help="Checkpoint for the candidate.")] = None,
    shape: ShapeOpt = None,
    backend_a: Annotated[str | None, typer.Option("--backend-a", help="Backend for the reference "
                         "(default: torch-cpu for models, ort-cpu for .onnx). `deploy backends` lists them.")] = None,
    backend_b: Annotated[str | None, typer.Option("--backend-b", help="Backend for the candidate.")] = None,
    precision: Annotated[str, typer.Option(help="Tolerance preset: fp32 (max rel ≤ 1e-5), fp16 (cosine ≥ 0.9999 "
                         "and max rel ≤ 1e-2), int8 (cosine ≥ 0.99).")] = "fp32",
    tol: Annotated[list[str] | None, typer.Option("--tol", help="Override a threshold, for all outputs or one: "
                   "max_rel=1e-4, logits:min_cosine=0.999. Keys: max_rel, max_abs, min_cosine, min_sqnr_db, "
                   "min_top1. Repeatable.")] = None,
    samples: Annotated[int, typer.Option("--inputs", help="Number of input samples.")] = 8,
    batch: Annotated[int | None, typer.Option(help="Samples per run (default: all at once, or the fixed "
                                                   "batch).")] = None,
    data: DataOpt = "auto",
    seed: Annotated[int, typer.Option(help="Seed for random inputs.")] = 0,
    threads: Annotated[int | None, typer.Option(help="CPU threads per backend (default: the runtime's).")] = None,
    json_path: JsonOpt = None,
) -> None:
    """Run two artifacts on the same inputs and compare every output.

    Metrics per output: max abs, max relative (max|a−b| / max|a|), lowest per-sample cosine, SQNR and
    mean-centred SQNR (dB), top-1 agreement. Exit 0 when every output is within tolerance, 1 when not.
    The last line starts with PASSED or FAILED.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .backends import get_runner_class
    from .harness import check_artifacts
    from .report import print_compare

    for name in (backend_a, backend_b):
        if name:
            get_runner_class(name)
    a = _load(reference, weights_a, shape)
    b = _load(candidate, weights_b, shape)
    with Progress(TextColumn("running"), BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
        task = bar.add_task("run", total=None)
        report = check_artifacts(a, b, backend_reference=backend_a, backend_candidate=backend_b, samples=samples,
                                 batch=batch, data=_data_arg(data, a), seed=seed, precision=precision,
                                 overrides=tol or [], threads=threads, tick=lambda: bar.advance(task))
    print_compare(report, out)
    _finish(report, json_path)


@app.command()
@handle_errors
def bench(
    artifacts: Annotated[list[str], typer.Argument(help="Model specs and/or .onnx files; the first is the baseline "
                         "of the ratios.")],
    backend: Annotated[str, typer.Option("--backend", help="Comma-separated backends: torch-cpu, ort-cpu, "
                       "torch-cuda, ort-cuda. A model spec on an ort-* backend is exported first.")] = "ort-cpu",
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes, e.g. 1,8.")] = "1",
    shape: ShapeOpt = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every backend (default: physical "
                       "cores).")] = None,
    warmup: Annotated[str, typer.Option(help="auto (until the median of the last runs is stable), a number of "
                      "runs (20), or seconds (2s).")] = "auto",
    min_runs: Annotated[int, typer.Option(help="Timed rounds at least.")] = 30,
    min_time: Annotated[float, typer.Option(help="Seconds of timed rounds at least.")] = 3.0,
    max_time: Annotated[float, typer.Option(help="Stop a group after this many seconds even short of "
                        "--min-runs.")] = 60.0,
    include_copies: Annotated[bool, typer.Option(help="CUDA: time host↔device copies too.")] = False,
    cuda_graphs: Annotated[bool, typer.Option(help="torch-cuda: replay a captured CUDA graph.")] = False,
    per_artifact: Annotated[bool, typer.Option(help="Interleave each artifact's backends as its own group "
                            "(ratios to its first backend) instead of all entries together.")] = False,
    ort_spinning: Annotated[bool, typer.Option(help="Let ONNX Runtime's idle threads spin (its default). Off "
                            "here: spinning threads steal the cores of the entries interleaved with them.")] = False,
    gap_ms: Annotated[float, typer.Option(help="Idle milliseconds before each timed run, so one runtime's "
                      "lingering threads do not slow the next entry.")] = 10.0,
    json_path: JsonOpt = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write the results as CSV.")] = None,
    md_path: Annotated[Path | None, typer.Option("--md", help="Write the results as a Markdown table.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG chart: latency per artifact and "
                    "batch, p90 whiskers.")] = None,
) -> None:
    """Latency side by side: artifacts interleaved in rounds (A B A B …) on each backend and batch size.

    Reports median, p90, p99, mean, std, min and throughput, and each entry's ratio to the first with a
    95% bootstrap interval over rounds. The machine (CPU flags, threads, library versions, GPU) is in
    every report.
    """
    from .backends import parse_backend_list
    from .bench import BenchConfig, Warmup, format_ratio, parse_batches, run_bench, speedup_text
    from .report import write_json

    backends = parse_backend_list(backend)
    config = BenchConfig(batches=parse_batches(batch), threads=threads, warmup=Warmup.parse(warmup),
                         min_runs=min_runs, min_time=min_time, max_time=max_time, include_copies=include_copies,
                         cuda_graphs=cuda_graphs, per_artifact=per_artifact, ort_spinning=ort_spinning,
                         gap=gap_ms / 1e3)
    if min_runs < 1 or min_time < 0 or max_time <= 0 or gap_ms < 0:
        raise BadInputError("--min-runs must be ≥ 1, --min-time ≥ 0, --max-time > 0 and --gap-ms ≥ 0")
    for target in (json_path, csv_path, md_path, plot):
        if target is not None and not target.parent.exists():
            raise BadInputError(f"{target}: folder {target.parent} does not exist")
    specs = [(spec, _load(spec, None, shape)) for spec in artifacts]
    with err.status("benchmarking", spinner="dots") as status:
        report = run_bench(specs, backends, config, tick=lambda msg: status.update(msg))
    env = report.environment
    table = Table(title=f"deploy bench — {env['cpu']['model']} "
                        f"({', '.join(env['cpu']['flags']) or 'no AVX-512/VNNI/AMX'}), {env['threads']} threads")
    table.add_column("artifact @ backend", overflow="fold", max_width=48)  # long paths wrap, numbers never do
    for col in ("batch", "median ms", "p90 ms", "p99 ms", "mean ± std ms", "min ms", "items/s", "ratio [95% CI]", "",
                "RSS MB"):
        table.add_column(col, justify="left" if col == "" else "right", no_wrap=True)
    for r in report.results:
        s = r.stats
        table.add_row(r.label, str(r.batch), f"{s.median * 1e3:.2f}", f"{s.p90 * 1e3:.2f}", f"{s.p99 * 1e3:.2f}",
                      f"{s.mean * 1e3:.2f} ± {s.std * 1e3:.2f}", f"{s.min * 1e3:.2f}", f"{r.throughput:.1f}",
                      format_ratio(r), speedup_text(r), "-" if r.rss_mb is None else f"{r.rss_mb:.0f}")
    out.print(table)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    if json_path:
        write_json(json_path, report.to_dict())
    if csv_path:
        _write_text(csv_path, report.to_csv())
    if md_path:
        _write_text(md_path, report.to_markdown())
    if plot:
        from .plot import plot_latency

        plot_latency(report, plot)
        out.print(f"chart: {plot}", markup=False)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@app.command()
@handle_errors
def backends(json_path: JsonOpt = None) -> None:
    """List each backend: what it runs, on which device, and why it is unavailable here when it is."""
    from .backends import backend_status
    from .report import write_json

    statuses = backend_status()
    table = Table(title="backends")
    for col in ("backend", "runs", "device", "available", "detail"):
        table.add_column(col)
    for s in statuses:
        table.add_row(s.name, "PyTorch models" if s.runs == "torch" else "ONNX files", s.device,
                      "[green]yes[/green]" if s.available else "[red]no[/red]", s.detail)
    out.print(table)
    if json_path:
        write_json(json_path, [s.__dict__ for s in statuses])


@app.command()
@handle_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the ONNX files and the report.")] = Path("results"),
    models: Annotated[str, typer.Option(help="Comma-separated zoo names.")] = "resnet18,mobilenet_v2",
    samples: Annotated[int, typer.Option("--inputs", help="Photo crops per check.")] = 16,
    fuse_model: Annotated[str, typer.Option("--fuse-model", help="Train-form model to export, fuse and benchmark "
                          "('' to skip).")] = "repvgg_a0",
    int8: Annotated[str, typer.Option("--int8", help="Comma-separated models (of --models and --fuse-model) to "
                    "quantize to int8 and time against fp32 ('' to skip).")] = "resnet18,repvgg_a0",
    with_digits: Annotated[bool, typer.Option("--digits/--no-digits", help="Also train (or load) the digits nets "
                           "and report int8 accuracy on real labelled data (`deploy digits`).")] = True,
) -> None:
    """The main job on CPU: export each model, check ONNX Runtime against PyTorch on real photos, report;
    then a train-form model exported, fused by the ONNX stage alone, checked and benchmarked side by side;
    then int8 (deploy quantize, auto, ort-cpu) of resnet18 and of the fused model, scored and timed against fp32;
    then the digits nets: int8 accuracy on real labelled data (`deploy digits`)."""
    from .accuracy import run_digits_accuracy
    from .models import UnknownModelError, get_model_entry
    from .pipeline import run_demo, run_fuse_demo, run_int8_demo, write_demo_report
    from .report import fmt_bytes

    names = tuple(n.strip() for n in models.split(",") if n.strip())
    int8_models = {n.strip() for n in int8.split(",") if n.strip()}
    for name in names:
        try:
            get_model_entry(name)
        except UnknownModelError as error:
            raise BadInputError(str(error)) from None
    if fuse_model:
        try:
            get_model_entry(fuse_model)
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
    if accuracy_rows:
        table = Table(title="int8 accuracy on real data — nets trained on scikit-learn's digits (400 test images)")
        for col in ("model", "form", "fp32 acc", "int8 acc", "drop", "method", "kept in float"):
            table.add_column(col, justify="left" if col in ("model", "form", "method") else "right")
        for r in accuracy_rows:
            table.add_row(r.model, r.form, f"{r.fp32_accuracy:.2f} %", f"{r.int8_accuracy:.2f} %", f"{r.drop:+.2f}",
                          r.method, str(len(r.kept_float)) if r.kept_float else "-")
        out.print(table)
    md, js = write_demo_report(rows, out_dir, fuse_row, int8_rows, accuracy_rows)
    out.print(f"report: {md} and {js}", markup=False)
    failed = [r.model for r in rows if not r.check.passed]
    if fuse_row is not None and not fuse_row.check.passed:
        failed.append(f"{fuse_row.model} (fused)")
    typer.echo(f"FAILED demo: {', '.join(failed)}" if failed else f"PASSED demo: {len(rows)} model(s)")
    if failed:
        raise typer.Exit(1)


def main() -> None:
    """Console entry point (click reports usage errors with exit code 2)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
