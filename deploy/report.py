"""Reports as terminal tables (rich) and as JSON files (written atomically)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .compare import CompareReport
from .errors import BadInputError


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON via a temporary file and a rename: never a half-written report."""
    path = Path(path)
    if not path.parent.exists():
        raise BadInputError(f"--json {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise BadInputError(f"--json {path}: is a folder; give a file name")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_jsonable(data), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fmt_count(n: int) -> str:
    return f"{n:,}"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fmt_db(x: float) -> str:
    return "∞" if x == math.inf else ("-∞" if x == -math.inf else f"{x:.1f}")


def compare_table(report: CompareReport) -> Table:
    table = Table(title=f"{report.candidate} ({report.backend_candidate}) vs {report.reference} "
                        f"({report.backend_reference}) — {report.data}, {report.precision} tolerance")
    exact = any(o.reference_fp32_error is not None for o in report.outputs)
    columns = ["output", "shape", "max abs", "max rel", *(["ref fp32 err"] if exact else []), "cosine", "SQNR dB",
               "centred SQNR", "top-1", "verdict"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("output", "verdict") else "right")
    for o in report.outputs:
        verdict = "[green]ok[/green]" if o.passed else f"[red]{'; '.join(o.failures)}[/red]"
        floor = [f"{o.reference_fp32_error:.3g}" if o.reference_fp32_error is not None else "-"] if exact else []
        table.add_row(o.name, "×".join(map(str, o.shape)), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", *floor,
                      f"{o.cosine:.6f}", fmt_db(o.sqnr_db), fmt_db(o.centred_sqnr_db),
                      "-" if o.top1 is None else f"{o.top1:.3f}", verdict)
    return table


def print_compare(report: CompareReport, console: Console) -> None:
    console.print(compare_table(report))
    for note in report.notes:
        console.print(f"note: {note}", markup=False)


def ops_table(title: str, columns: dict[str, dict[str, int]]) -> Table:
    """Op histogram, one count column per stage (e.g. before/after)."""
    table = Table(title=title)
    table.add_column("op")
    for name in columns:
        table.add_column(name, justify="right")
    ops = sorted({op for hist in columns.values() for op in hist},
                 key=lambda op: (-max(h.get(op, 0) for h in columns.values()), op))
    for op in ops:
        table.add_row(op, *(str(h.get(op, 0)) for h in columns.values()))
    table.add_row("[bold]total[/bold]", *(f"[bold]{sum(h.values())}[/bold]" for h in columns.values()))
    return table
