"""`deploy bench`: latency side by side, interleaved; with --max-ratio, a verdict CI can fail on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import api, err, finish, guard, out, resolve_threads, verb
from .options import Json, Shape, Threads, Weights, WeightsB, examples


@verb(epilog=examples(
    "deploy bench resnet18 resnet18.onnx --backend torch-cpu,ort-cpu --batch 1,8 --json out.json --plot out.png",
    "deploy bench a.onnx b.onnx --backend ort-cpu --threads 4 --min-runs 100 --csv out.csv --md out.md",
    "deploy bench fp32.onnx int8.onnx --max-ratio 0.8    # exit 1 unless int8 takes ≤ 0.8× the fp32 time"))
def bench(
    artifacts: Annotated[list[str], typer.Argument(help="Model specs and/or .onnx files; the first is the baseline "
                         "of the ratios.")],
    backend: Annotated[str, typer.Option("--backend", help="Comma-separated backends: torch-cpu, ort-cpu, "
                       "ov-cpu, ov-cpu-bf16, torch-cuda, ort-cuda, trt. A model spec on an ort-*/ov-* backend is "
                       "exported first.")] = "ort-cpu",
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes to time, comma-separated, e.g. 1,8 (each is "
                     "the batch dim of every run).")] = "1",
    weights: Weights = None,
    weights_b: WeightsB = None,
    shape: Shape = None,
    threads: Threads = None,
    max_ratio: Annotated[float | None, typer.Option("--max-ratio", help="Fail (exit 1, last line FAILED) when any "
                         "entry's latency ratio to its group's first entry is above this, e.g. 1.05 to allow 5 % "
                         "slower, 0.8 to demand 1.25× faster.")] = None,
    warmup: Annotated[str, typer.Option(help="auto (until the median of the last runs is stable), a number of "
                      "runs (20), or seconds (2s).")] = "auto",
    min_runs: Annotated[int, typer.Option(help="Timed rounds at least.")] = 30,
    min_time: Annotated[float, typer.Option(help="Seconds of timed rounds at least.")] = 3.0,
    max_time: Annotated[float, typer.Option(help="Stop a group after this many seconds even short of "
                        "--min-runs.")] = 60.0,
    memory: Annotated[str, typer.Option(help="fresh: each entry's peak memory measured in its own new process "
                      "(independent of run order); inline: in this process, after the entries before it; "
                      "off.")] = "fresh",
    include_copies: Annotated[bool, typer.Option(help="CUDA: time host↔device copies too.")] = False,
    cuda_graphs: Annotated[bool, typer.Option(help="torch-cuda: replay a captured CUDA graph.")] = False,
    per_artifact: Annotated[bool, typer.Option(help="Interleave each artifact's backends as its own group "
                            "(ratios to its first backend) instead of all entries together.")] = False,
    ort_spinning: Annotated[bool, typer.Option(help="Let ONNX Runtime's idle threads spin (its default). Off "
                            "here: spinning threads steal the cores of the entries interleaved with them.")] = False,
    gap_ms: Annotated[float, typer.Option(help="Idle milliseconds before each timed run, so one runtime's "
                      "lingering threads do not slow the next entry.")] = 10.0,
    json_path: Json = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write the results as CSV.")] = None,
    md_path: Annotated[Path | None, typer.Option("--md", help="Write the results as a Markdown table.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG chart: latency per artifact and "
                    "batch, p90 whiskers.")] = None,
) -> None:
    """Latency side by side: artifacts interleaved in rounds (A B A B …) on each backend and batch size.

    Reports median, p90, p99, mean, std, min and throughput, and each entry's ratio to the first with a
    95% bootstrap interval over rounds ("same" when the interval contains 1). The machine (CPU flags,
    threads, library versions, GPU) is in every report. --weights loads into the first artifact,
    --weights-b into the second.
    """
    from ..artifacts.files import write_text_atomic
    from ..harness.bench import format_ratio, speedup_text

    outputs = [("--json", json_path), ("--csv", csv_path), ("--md", md_path), ("--plot", plot)]
    guard([], outputs)
    threads = resolve_threads(threads)
    with err.status("benchmarking", spinner="dots") as status:
        report = api.bench(*artifacts, weights=weights, weights_b=weights_b, shape=shape, backend=backend, batch=batch,
                           threads=threads, warmup=warmup, min_runs=min_runs, min_time=min_time, max_time=max_time,
                           include_copies=include_copies, cuda_graphs=cuda_graphs, per_artifact=per_artifact,
                           ort_spinning=ort_spinning, gap_ms=gap_ms, memory=memory, max_ratio=max_ratio,
                           progress=status.update)
    inputs = api.current().inputs
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
    if csv_path:
        write_text_atomic(csv_path, report.to_csv())
    if md_path:
        write_text_atomic(md_path, report.to_markdown())
    if plot:
        from ..harness.plot import plot_latency

        plot_latency(report, plot)
        out.print(f"chart: {plot}", markup=False)
    finish(report, json_path, inputs=inputs, outputs=outputs[1:], threads=threads)
