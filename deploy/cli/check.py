"""`deploy check`: two artifacts on the same inputs, every output judged; the verb CI runs."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import api, err, finish, guard, out, resolve_threads, verb
from .options import (
    Bgr,
    Data,
    Interp,
    Json,
    Layout,
    LetterboxAnchor,
    Mean,
    OldBatch,
    OldInputs,
    OldWeightsA,
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
    WeightsB,
    examples,
    renamed,
)


@verb(epilog=examples(
    "deploy check resnet18 resnet18.onnx",
    "deploy check a.onnx b.onnx --data ./val_images --samples 64 --precision fp16 --json report.json",
    "deploy check net.onnx net_fused.onnx --tol max_rel=1e-4 --tol logits:min_cosine=0.9999"))
def check(
    reference: Annotated[str, typer.Argument(help="Reference artifact: model spec or .onnx.")],
    candidate: Annotated[str, typer.Argument(help="Candidate artifact: model spec or .onnx.")],
    weights: Weights = None,
    weights_b: WeightsB = None,
    shape: Shape = None,
    backend_a: Annotated[str | None, typer.Option("--backend-a", help="Backend for the reference "
                         "(default: torch-cpu for models, ort-cpu for .onnx). `deploy backends` lists them.")] = None,
    backend_b: Annotated[str | None, typer.Option("--backend-b", help="Backend for the candidate.")] = None,
    precision: Annotated[str, typer.Option(help="Tolerance preset: fp32 (max rel ≤ 1e-5), fp16 (cosine ≥ 0.9999, "
                         "SQNR ≥ 40 dB, every channel ≥ 20 dB), bf16 (as fp16: ov-cpu-bf16), int8 (cosine ≥ 0.99, "
                         "every channel ≥ 3 dB; "
                         "a softmax output: total variation ≤ 0.1 instead of cosine). Cosine is the 5th "
                         "percentile over samples; score channels silent on the data (< 2/255) are judged within 2 "
                         "steps.")] = "fp32",
    tol: Annotated[list[str] | None, typer.Option("--tol", help="Override a threshold, for all outputs or one: "
                   "max_rel=1e-4, logits:min_cosine=0.999. Keys: max_rel, max_abs, min_cosine, min_sqnr_db, "
                   "min_top1, min_channel_sqnr_db, max_tv. Repeatable.")] = None,
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
    localize: Annotated[bool, typer.Option("--localize", help="When the check fails, run `deploy debug` on the "
                                           "pair (an ONNX candidate): the first diverging layer and the worst "
                                           "ones.")] = False,
    threads: Threads = None,
    json_path: Json = None,
    old_weights_a: OldWeightsA = None,
    old_inputs: OldInputs = None,
    old_batch: OldBatch = None,
) -> None:
    """Run two artifacts on the same inputs and compare every output.

    Metrics per output: max abs, max relative (max|a−b| / max|a|), lowest per-sample cosine, SQNR and
    mean-centred SQNR (dB), top-1 agreement. Exit 0 when every output is within tolerance, 1 when not.
    The last line starts with PASSED or FAILED.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..harness.report import print_compare

    weights = renamed(weights, old_weights_a, "--weights-a")
    samples = renamed(samples, old_inputs, "--inputs", default=8)
    run_batch = renamed(run_batch, old_batch, "--batch")
    guard([], [("--json", json_path)])
    threads = resolve_threads(threads)
    with Progress(TextColumn("running"), BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
        task = bar.add_task("run", total=None)
        report = api.check(
            reference, candidate, weights=weights, weights_b=weights_b, shape=shape, backend_a=backend_a,
            backend_b=backend_b, precision=precision, tol=tol, data=data, samples=samples, run_batch=run_batch,
            seed=seed, threads=threads, tick=lambda: bar.advance(task), preprocess=preprocess, mean=mean, std=std,
            scale=scale, bgr=bgr, resize=resize, layout=layout, pad=pad, anchor=anchor, interp=interp)
    inputs = api.current().inputs
    print_compare(report, out)
    extra = None
    if localize and not report.passed:
        extra = {"localize": _localize(reference, candidate, weights, shape, backend_a, backend_b, samples,
                                       run_batch, data, seed, precision, threads)}
    finish(report, json_path, inputs=inputs, threads=threads, extra=extra)


def _localize(reference, candidate, weights, shape, backend_a, backend_b, samples, run_batch, data, seed, precision,
              threads) -> dict | None:
    from ..artifacts.spec import is_onnx_spec
    from ..errors import DeployError
    from .debug import print_debug

    if not is_onnx_spec(candidate):
        err.print("note: --localize reads an ONNX candidate's tensors; this candidate is not an ONNX file",
                  markup=False)
        return None
    try:
        with err.status("localizing the divergence", spinner="dots") as status:
            report = api.debug(reference, candidate, weights=weights, shape=shape,
                               backend_a=backend_a if is_onnx_spec(reference) else None, backend_b=backend_b,
                               precision=precision, data=data, samples=samples, run_batch=run_batch, seed=seed,
                               threads=threads, progress=status.update)
    except DeployError as error:  # nothing aligns, a backend debug cannot read: the check's verdict stands
        err.print(f"note: --localize: {error}", markup=False)
        return None
    except Exception as error:  # a bug in debug must not take the check's verdict and report with it
        err.print(f"note: --localize failed (a bug in deploy): {type(error).__name__}: {error}", markup=False)
        return None
    print_debug(report, top=10)
    typer.echo(report.summary())
    return report.to_dict()
