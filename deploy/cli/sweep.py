"""`deploy sweep SWEEP.toml`: a matrix of models × verbs × backends as cells on Ray or a local pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import api, err, guard, out, verb
from .options import Json, Threads, examples


@verb(epilog=examples(
    "deploy sweep sweep.toml",
    "deploy sweep sweep.toml --ray 10.0.0.5:6379 --out results/sweep",
    "deploy sweep sweep.toml --ray off --workers 4"))
def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP.toml", help="The matrix: [matrix] models, verbs, "
                          "backends; [args] per verb; [resources.BACKEND] cpus, gpus, custom; retries, timeout, "
                          "out.")],
    ray: Annotated[str, typer.Option(help="local (a Ray started for this run, --workers CPUs), the ADDRESS of a "
                   "running cluster (ray start --head prints it), or off (a local process pool).")] = "local",
    workers: Annotated[int, typer.Option(help="Cells run at once on the local Ray or the pool (a cell asks 1 CPU "
                       "unless [resources] says more).")] = 2,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Results folder (default: the sweep file's "
                      "`out`, else SWEEP-results beside it). Finished cells there are skipped.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the file and list the cells and what each "
                       "would run; start nothing.")] = False,
    threads: Threads = None,
    json_path: Json = None,
) -> None:
    """Run a matrix of models × verbs × backends, each cell a Ray task (or a local worker slot).

    Each cell runs the real verb in a child process, asks the cluster for what its backend needs (CPUs; a GPU
    and a custom resource such as TensorRT=1, so a TensorRT cell lands only on a node that offers it), and
    writes into OUT/cells/CELL/. A cell whose verb crashes or whose worker dies is retried up to `retries`
    times, then recorded as failed; the other cells' results are never lost. A rerun skips finished cells.
    OUT/sweep.json, sweep.md and report.html combine them. Exit 1 unless every cell passed (a FAILED verdict
    counts).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..artifacts.files import write_json
    from ..sweeps.matrix import finished

    guard([], [("--json", json_path)])
    if dry_run:
        plan = api.sweep(sweep_file, output=output, dry_run=True)
        for cell in plan.cells:
            state = "finished, skipped" if finished(cell) else "to run"
            out.print(f"{cell.key}  [{state}]  deploy {' '.join(cell.command(threads))}", markup=False)
        typer.echo(f"DRY RUN {sweep_file}: {len(plan.cells)} cells, "
                   f"{sum(not finished(c) for c in plan.cells)} to run, results in {plan.out}")
        return
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("sweep", total=None)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total, description=text[:100])

        report = api.sweep(sweep_file, output=output, ray=ray, workers=workers, threads=threads, progress=progress)
    data = report.to_dict()
    from rich.table import Table

    table = Table(title=f"sweep {sweep_file}: {data['wall_seconds']:.1f} s, {data['executor']}")
    for col in ("model", "verb", "backend", "status", "attempts", "s", "last line"):
        table.add_column(col)
    for r in data["cells"]:
        table.add_row(r["model"], r["verb"], r["backend"], r["status"], str(r.get("attempts", "")),
                      str(r.get("seconds") or ""), (r.get("last_line") or "")[:90])
    out.print(table)
    if json_path:
        write_json(json_path, data)
    typer.echo(report.summary())
    if not report.passed:
        raise typer.Exit(1)
