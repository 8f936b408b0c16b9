"""`deploy quantize` (int8 Q/DQ, fp16) and `deploy digits` (int8 accuracy on real labelled data)."""

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
    KeepFailed,
    Layout,
    LetterboxAnchor,
    Mean,
    OldBatch,
    OldCalib,
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
    renamed,
)


@verb(epilog=examples(
    "deploy quantize resnet18.onnx -o r18.int8.onnx",
    "deploy quantize net.onnx -o net.int8.onnx --data ./images --samples 256 --max-drop 0.5 --keep-float first,last",
    "deploy quantize net.onnx -o net.trt.onnx --target trt --trt-cache calib.cache"))
def quantize(
    model: Annotated[str, typer.Argument(help="Model spec or .onnx file (fp32; BatchNormalization is folded "
                     "first).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The quantized .onnx file to write; int8 also "
                      "writes its ranges table beside it (OUT.ranges.json).")],
    precision: Annotated[str, typer.Option(help="int8 (Q/DQ from calibration) or fp16 (float16 weights and "
                         "compute, float32 inputs/outputs).")] = "int8",
    data: Data = "photos",
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
    samples: Samples = 128,
    method: Annotated[str, typer.Option(help="Range method: minmax, percentile (99.99), percentile-99.9, "
                      "percentile-99.999, entropy (TensorRT's KL), mse, or auto (all, from one histogram pass; "
                      "the best on held-out data is written).")] = "auto",
    target: Annotated[str, typer.Option(help="ort-cpu (uint8 activations: ONNX Runtime's fast x86 kernels), "
                      "ov-cpu (OpenVINO's CPU plugin: uint8 activations, float bias; judged and timed on OpenVINO), "
                      "ort-cuda (int8 S8S8), trt (TensorRT explicit quantization: symmetric int8, zero point 0, "
                      "float bias).")] = "ort-cpu",
    keep_float: Annotated[str | None, typer.Option("--keep-float", help="Comma-separated nodes kept in float: "
                          "node names, op types (Gemm), 'first', 'last'.")] = None,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help="Budget in top-1 points (accuracy drop when "
                        "the data has labels, else disagreement with fp32). Missed: per-layer sensitivity, then "
                        "the most sensitive layers stay float until it holds.")] = None,
    min_sqnr: Annotated[float | None, typer.Option("--min-sqnr", help="Budget: mean-centred output SQNR in dB "
                        "against fp32.")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval", help="Held-out data for scoring, any --data source "
                         "(default: the --data source, after the calibration samples: disjoint).")] = None,
    eval_samples: Annotated[int, typer.Option("--eval-samples", help="Held-out samples.")] = 64,
    run_batch: RunBatch = None,
    trt_cache: Annotated[Path | None, typer.Option("--trt-cache", help="Also write the ranges as a TensorRT "
                         "(≤ 10) calibration cache.")] = None,
    weights: Weights = None,
    shape: Shape = None,
    threads: Threads = None,
    keep_failed: KeepFailed = False,
    allow_poor: Annotated[bool, typer.Option("--allow-poor", help="Write the result even when it misses `deploy "
                                             "check`'s preset for its precision on the held-out data (int8: "
                                             "cosine ≥ 0.99, every channel ≥ 3 dB), with a loud POOR line and "
                                             "exit 0. Default: such a file is FAILED, exit 1, not written.")] = False,
    mixed: Annotated[bool, typer.Option("--mixed/--no-mixed", help="With no budget: when the all-int8 result "
                     "(after tier 2) misses deploy check's int8 preset, put layers and tensors back in float, one "
                     "at a time, each kept only when the result comes nearer, until it holds (mixed precision). "
                     "--no-mixed judges the all-int8 result as it is.")] = True,
    tier2: Annotated[bool, typer.Option("--tier2/--no-tier2", help="When the tournament's best misses the aim "
                     "(budget or preset): second-tier PTQ before mixed precision — GPTQ weight rounding and "
                     "empirical bias correction on the calibration data, each kept only when the held-out score "
                     "improves.")] = True,
    placement: Annotated[str, typer.Option("--placement", help="Where Q/DQ go: 'convs' (around Conv/Gemm/"
                         "MatMul, Add, Concat, pooling: float ops between them run in float), 'elementwise' (also "
                         "Add/Mul with constants, Mul of activations, Sigmoid/LeakyRelu outputs, HardSwish and "
                         "HardSigmoid written out as Add/Clip/Mul, a Mul by a positive constant as a change of "
                         "scale, Resize/Slice/Split on uint8: no float island left between integer convs), or "
                         "'auto' (ort-cpu: both judged and timed at batch 1 against fp32 in one interleaved run; the "
                         "one that meets the preset first, then the faster beyond the noise, else the nearer to "
                         "the preset).")] = "auto",
    time_budget: Annotated[float | None, typer.Option("--time-budget", help="Seconds tier 2 may take (it stops "
                           "between layers and says so). Default: no limit.")] = None,
    json_path: Json = None,
    old_calib: OldCalib = None,
    old_batch: OldBatch = None,
) -> None:
    """Int8 (Q/DQ) or fp16, written into the ONNX graph and scored against fp32 on held-out real data.

    Int8: one pass over the calibration data (--data) collects histograms of every tensor the target
    quantizes; each range method is derived from them and, with --method auto, scored on held-out data by
    top-1 agreement (accuracy with labelled .npz data) and mean-centred SQNR; the best is written. With a
    budget (--max-drop/--min-sqnr) that is missed, layers are ranked by sensitivity and the most sensitive
    kept in float until it holds; with no budget, the same mixed precision aims at deploy check's int8 preset
    (--no-mixed to skip it). When nothing meets it, the last line is FAILED, the exit code 1, and no file is
    written unless --keep-failed.
    """
    from ..harness.report import print_quantize
    from ..jobs.quantize import table_path_for

    data = renamed(data, old_calib, "--calib", default="photos")
    run_batch = renamed(run_batch, old_batch, "--batch")
    guard([], [("--json", json_path)])
    threads = resolve_threads(threads)
    with err.status("quantizing", spinner="dots") as status:
        report = api.quantize(
            model, output, precision=precision, data=data, samples=samples, method=method, target=target,
            keep_float=keep_float, max_drop=max_drop, min_sqnr=min_sqnr, eval_data=eval_data,
            eval_samples=eval_samples, run_batch=run_batch, trt_cache=trt_cache, weights=weights, shape=shape,
            threads=threads, keep_failed=keep_failed, allow_poor=allow_poor, mixed=mixed, tier2=tier2,
            placement=placement, time_budget=time_budget, progress=status.update, preprocess=preprocess,
            mean=mean, std=std, scale=scale, bgr=bgr, resize=resize, layout=layout, pad=pad, anchor=anchor,
            interp=interp)
    inputs = api.current().inputs
    outputs = [("-o", output), ("ranges table", table_path_for(output) if precision == "int8" else None),
               ("--trt-cache", trt_cache)]
    print_quantize(report, out)
    finish(report, json_path, inputs=inputs, outputs=outputs[:3] if report.written else [], threads=threads)


@verb(epilog=examples("deploy digits", "deploy digits --target trt --out results/digits-trt --json digits.json"))
def digits(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the ONNX files, the npz splits and the "
                       "report.")] = Path("results/digits"),
    target: Annotated[str, typer.Option(help="Quantization target (see `deploy quantize --help`).")] = "ort-cpu",
    seed: Annotated[int, typer.Option(help="Training seed (each seed trains and caches its own checkpoints).")] = 0,
    json_path: Json = None,
) -> None:
    """Int8 accuracy on real labelled data: small nets trained here on scikit-learn's digits.

    Trains digits-resnet and digits-repvgg (deterministic, under a minute on a laptop CPU, cached in
    $DEPLOY_CACHE or ~/.cache/deploy), exports them, quantizes them with `deploy quantize` (calibration split;
    method chosen on a slice of the training split) and reports fp32 vs int8 accuracy on the disjoint test
    split; RepVGG also after reparameterization, and with the sensitivity fallback.
    """
    from ..artifacts.files import write_json
    from ..jobs.digits_accuracy import run_digits_accuracy

    guard([], [("--json", json_path)])
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
        write_json(json_path, [r.to_dict() for r in rows])  # a list of rows, as before
    worst = max(rows, key=lambda r: r.drop)
    typer.echo(f"DONE digits: {len(rows)} int8 models; largest drop {worst.drop:+.2f} points ({worst.model}, "
               f"{worst.form})")
