"""`deploy demo`: the main job on CPU (what `make demo` runs): `deploy pipeline` per demo model, an index page."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import err, guard, out, resolve_threads, spec_inputs, verb, write_report
from .options import Json, Samples, Shape, Threads, examples


@verb(epilog=examples("deploy demo --out results",
                      "deploy demo --models digits-resnet --out /tmp/d",
                      "deploy demo --models resnet18,mobilenet_v2 --max-drop 2 --out results"))
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for one pipeline folder per model (artifacts, "
                       "report.html, manifest.json), the demo's data, index.html, demo.json and demo.md.")]
    = Path("results"),
    models: Annotated[str, typer.Option(help="Comma-separated: digits-resnet / digits-repvgg (trained here on "
                      "scikit-learn's digits, labelled), ppocr-cls (PaddleOCR's text-direction classifier, fetched "
                      "by `make setup`), any zoo name (bundled photos), file.py:factory (with --shape) or an .onnx "
                      "file.")]
    = "digits-resnet,repvgg_a0,ppocr-cls",
    backend: Annotated[str, typer.Option(help="Backends each pipeline times and chooses for, comma-separated: "
                       "ort-cpu, ov-cpu, ort-cuda, trt.")] = "ort-cpu",
    max_drop: Annotated[float, typer.Option(help="Budget for every model: top-1 points lost on held-out data "
                        "(accuracy where the data is labelled, else disagreement with fp32).")] = 1.0,
    min_sqnr: Annotated[float | None, typer.Option(help="Budget as mean-centred SQNR against fp32, dB, instead of "
                        "--max-drop: for models whose output is not a classifier's (detectors, maps).")] = None,
    shape: Shape = None,
    samples: Samples = 256,
    eval_samples: Annotated[int, typer.Option(help="Held-out samples each candidate is certified on (zoo models "
                            "and ONNX files; the labelled demo sets use all of theirs).")] = 100,
    min_time: Annotated[float, typer.Option(help="Seconds of interleaved timing per backend and model (at least "
                        "20 rounds).")] = 3.0,
    threads: Threads = None,
    json_path: Json = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Prepare and load every model (data, weights, "
                       "fetched files) and print the plan; run no pipeline and write nothing under --out (the "
                       "digits nets are trained into the cache if not there). Exit 1 when a model could not be "
                       "prepared, 4 on a bug.")] = False,
) -> None:
    """The main job on CPU: `deploy pipeline` on each demo model, then OUT/index.html linking every report.

    Per model: export (certified equal), exact passes (the RepVGG train form is reparameterized by the generic
    ONNX merge), int8, pruning where the PyTorch model is at hand, each candidate certified on held-out data
    that tuned nothing and timed interleaved against the fp32 export; the fastest within the budget ships.
    A stage that misses its preset or budget is a row with its reason. The last line is `PASSED demo: …`
    when every pipeline ran and each model has a chosen artifact, else `FAILED demo: …` (exit 1); a bug in
    deploy anywhere is exit 4, with the model named.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..artifacts.spec import parse_shapes
    from ..errors import BadInputError
    from ..pipelines.demo import check_names, run_demo
    from ..pipelines.run import PipelineOptions, check_backends, validate

    names = tuple(dict.fromkeys(n.strip() for n in models.split(",") if n.strip()))
    check_names(names)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"--out {out_dir}: a file is there; give a folder")
    if json_path is not None and json_path.resolve().parent == out_dir.resolve() and \
            json_path.name in ("index.html", "demo.json", "demo.md"):
        raise BadInputError(f"--json {json_path}: the demo writes that file itself; give another name")
    guard([pair for name in names for pair in spec_inputs("model", name)], [("--json", json_path)])
    threads = resolve_threads(threads)
    base = PipelineOptions(backends=tuple(b.strip() for b in backend.split(",") if b.strip()),
                           max_drop=None if min_sqnr is not None else max_drop, min_sqnr=min_sqnr,
                           samples=samples, eval_samples=eval_samples, min_time=min_time, threads=threads,
                           command=["deploy", *sys.argv[1:]])
    validate(base)
    check_backends(base.backends)
    if dry_run:
        _dry_run(names, base, parse_shapes(shape))
        return
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(model: str, done: int, total: int, text: str) -> None:
            if model not in tasks:
                tasks[model] = bar.add_task(model, total=total)
            bar.update(tasks[model], completed=done, total=total, description=f"{model}: {text}"[:110])

        report = run_demo(out_dir, names, base, progress=progress,
                          say=lambda msg: err.print(f"note: {msg}", markup=False), shape=parse_shapes(shape))
    _print(report)
    write_report(json_path, report.to_dict(), inputs=[], outputs=[("index", out_dir / "index.html")],
                 threads=threads)
    typer.echo(report.summary())
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _dry_run(names: tuple[str, ...], base, shape) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..pipelines.demo import DemoRow, check_plan

    with err.status("preparing the demo models", spinner="dots") as status:
        plan = check_plan(names, base, say=lambda msg: status.update(msg), shape=shape)
    table = Table(title="deploy demo --dry-run: the pipelines it would run")
    for col in ("model", "spec", "tune / certify on", "batch", "pruning", "budget", "ready"):
        table.add_column(col)
    failed, internal = [], False
    for item in plan:
        if isinstance(item, DemoRow):
            failed.append(f"{item.model}: {item.reason}")
            internal = internal or item.status == "internal error"
            table.add_row(item.model, "—", "—", "—", "—", "—", f"[red]{escape(item.reason or '')}[/]")
            continue
        o = item.options
        data = f"{Path(o.data).name} ({o.samples}) / {Path(o.eval_data).name} ({o.eval_samples})" if o.eval_data \
            else f"{o.data} ({o.samples} tune, {o.eval_samples} certify)"
        table.add_row(item.name, escape(item.spec if len(item.spec) < 60 else "…" + item.spec[-57:]), data,
                      str(o.batch), ", ".join(f"{t:g}" for t in o.prune_latency) or "none",
                      f"drop ≤ {o.max_drop:g} points" if o.max_drop is not None else f"SQNR ≥ {o.min_sqnr:g} dB",
                      "[green]yes[/]")
    out.print(table)
    if failed:
        typer.echo(f"FAILED demo --dry-run: {'; '.join(failed)}")
        raise typer.Exit(4 if internal else 1)
    typer.echo(f"PASSED demo --dry-run: {len(plan)} model(s) ready")


def _print(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..pipelines.demo_index import candidate_rows, ship_rows

    for r in report.rows:
        if r.report is None:
            continue
        for backend in r.report.choices:
            table = Table(title=f"{r.model} on {backend}, batch {r.report.options.batch} — {r.seconds:.0f} s")
            for col in ("candidate", "vs fp32 [95 % CI]", "quality (held-out)", "verdict"):
                table.add_column(col, justify="right" if col.startswith("vs") else "left")
            for c in candidate_rows(r.report, backend):
                verdict = "[bold green]chosen[/]" if c["kind"] == "chosen" else escape(c["verdict"][:120])
                table.add_row(c["candidate"], c["speed"], c["quality"], verdict)
            out.print(table)
    table = Table(title=f"deploy demo — what ships ({report.seconds:.0f} s); {report.folder}/index.html")
    for col in ("model", "backend", "ships", "vs fp32 [95 % CI]", "quality (held-out)", "verdict"):
        table.add_column(col, justify="right" if col.startswith("vs") else "left")
    for s in ship_rows(report):
        colour = "green" if s["verdict"] == "PASSED" else "red"
        verdict = f"[{colour}]{s['verdict']}[/]" + ("" if s["verdict"] == "PASSED" else f" {escape(s['why'][:100])}")
        table.add_row(s["model"], s["backend"], escape(s["ships"]), s["speed"], escape(s["quality"]), verdict)
    out.print(table)
