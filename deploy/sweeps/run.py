"""Running a sweep's cells: on Ray (a local Ray started for the run, or an existing cluster) or in a local
pool of worker slots; recording each cell when it ends; the combined report.

A cell is the real CLI verb in a child process of the worker that runs it. The child is tied to its worker
(Linux: PR_SET_PDEATHSIG), so killing a worker kills its cell; Ray then retries the task on another worker
(``max_retries``), and a verb that crashed (exit 3/4, a signal, a timeout) is retried the same way
(``retry_exceptions``). Exits 0/1/2 end the cell: a verdict or bad input does not change on retry. Only the
driver writes ``cell.json``, one atomic file per ended cell, so finished cells survive anything that
happens to the others.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from ..artifacts.files import jsonable, write_text_atomic
from ..errors import BadInputError, MissingDependencyError
from ..reporting import Report
from .matrix import FINAL_CODES, Cell, Sweep, finished, read_cell

RAY_INSTALL = ("Ray is not installed: pip install 'deploy[ray]' (or pip install ray), or run the same matrix "
               "in a local process pool with --ray off --workers N")


class CellCrashed(Exception):
    """A cell's verb ended in a way a retry may fix (a crash, a signal, a timeout)."""


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl() if sys.platform.startswith("linux") else None  # looked up here: the forked child only calls it


def _tie_to_parent() -> None:
    """In the child, before exec: die with the worker that started it (Linux prctl PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL, 0, 0, 0)


def run_cell(command: list[str], folder: str, timeout: float) -> dict:
    """Run one attempt of a cell (a deploy verb) and say how it ended. Each attempt leaves a marker in
    ``folder/.attempts`` (so the count survives a killed worker) and appends to ``folder/log.txt``."""
    d = Path(folder)
    (d / ".attempts").mkdir(parents=True, exist_ok=True)
    attempt = len(list((d / ".attempts").iterdir())) + 1
    (d / ".attempts" / f"{attempt}-{os.getpid()}").write_text(_now())
    start = time.perf_counter()
    argv = [sys.executable, "-m", "deploy.cli", *command]
    with open(d / "log.txt", "a") as log:
        log.write(f"\n=== attempt {attempt} on {socket.gethostname()} pid {os.getpid()} at {_now()}: "
                  f"deploy {' '.join(command)}\n")
        log.flush()
        try:
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  preexec_fn=_tie_to_parent if _PRCTL is not None else None)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = -9
            log.write(f"\n=== timed out after {timeout:g} s\n")
    tail = (d / "log.txt").read_text(errors="replace").strip().splitlines()
    return {"rc": rc, "seconds": round(time.perf_counter() - start, 2), "attempt": attempt,
            "host": socket.gethostname(), "pid": os.getpid(), "last_line": tail[-1][:300] if tail else ""}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _attempts(cell: Cell) -> int:
    folder = cell.folder / ".attempts"
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def _record(cell: Cell, status: str, result: dict | None, error: str | None, started: str) -> dict:
    summary = None
    result_path = cell.folder / "result.json"
    if result_path.is_file():
        try:
            data = json.loads(result_path.read_text())
            summary = {k: data[k] for k in ("passed", "verdict", "summary", "chosen", "output") if k in data}
        except (OSError, json.JSONDecodeError):
            summary = None
    record = {"cell": cell.key, "model": cell.model, "verb": cell.verb, "backend": cell.backend,
              "status": status, "rc": None if result is None else result["rc"], "attempts": _attempts(cell),
              "seconds": None if result is None else result["seconds"], "started": started, "ended": _now(),
              "host": None if result is None else result["host"],
              "last_line": (result or {}).get("last_line") or error, "error": error,
              "command": ["deploy", *cell.command()], "fingerprint": cell.fingerprint(),
              "resources": cell.resources.to_dict(), "result": summary}
    cell.folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cell.folder / "cell.json", json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")
    return record


Progress = Callable[[int, int, str], None]


class SweepReport(Report):
    """A finished sweep: every cell's result (``to_dict()``, what ``results.json`` holds) and the verdict."""

    def __init__(self, sweep: Sweep, data: dict):
        self.sweep = sweep
        self.data = data

    @property
    def passed(self) -> bool:
        return bool(self.data["passed"])

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.data["counts"].items())
        return (f"{'PASSED' if self.passed else 'FAILED'} sweep {self.sweep.path}: {len(self.data['cells'])} cells "
                f"({counts}); ran {self.data['ran']}, skipped {self.data['skipped_finished']} finished — "
                f"{self.sweep.out}/report.html")

    def to_dict(self) -> dict:
        return self.data


def run_sweep(sweep: Sweep, ray: str = "local", workers: int = 2, progress: Progress | None = None,
              threads: int | None = None) -> dict:
    """Run every unfinished cell; return the combined results (also written to OUT/sweep.json, OUT/sweep.md
    and OUT/report.html). ``ray``: 'local', an address, or 'off' (the local pool)."""
    if workers < 1:
        raise BadInputError(f"--workers {workers}: must be at least 1")
    sweep.out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in sweep.cells if not finished(c)]
    skipped = len(sweep.cells) - len(todo)
    for cell in todo:  # a cell runs afresh: an earlier run's report and attempt count are not this run's
        (cell.folder / "result.json").unlink(missing_ok=True)
        if (cell.folder / ".attempts").is_dir():
            shutil.rmtree(cell.folder / ".attempts", ignore_errors=True)
    tick = progress or (lambda *_: None)
    start = time.perf_counter()
    if todo:
        if ray == "off":
            _run_pool(sweep, todo, workers, tick, threads)
        else:
            _run_ray(sweep, todo, ray, workers, tick, threads)
    return write_results(sweep, skipped, len(todo), time.perf_counter() - start, ray, workers)


def _final_status(rc: int) -> str | None:
    return FINAL_CODES.get(rc)


def _run_pool(sweep: Sweep, todo: list[Cell], workers: int, tick: Progress, threads: int | None) -> None:
    """``workers`` cells at a time, each in its own child process; a crashed attempt is retried."""
    def one(cell: Cell) -> tuple[str, dict | None, str | None, str]:
        started = _now()
        result = None
        for _ in range(sweep.retries + 1):
            result = run_cell(cell.command(threads or _cpus(cell)), str(cell.folder), sweep.timeout)
            status = _final_status(result["rc"])
            if status is not None:
                return status, result, None, started
        return "failed", result, f"exit {result['rc']} on every one of {sweep.retries + 1} attempts", started

    done = 0
    tick(done, len(todo), f"{len(todo)} cells on {workers} local workers")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, c): c for c in todo}
        while futures:
            ready, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for f in ready:
                cell = futures.pop(f)
                status, result, error, started = f.result()
                _record(cell, status, result, error, started)
                done += 1
                tick(done, len(todo), f"{cell.key}: {status}")


def _cpus(cell: Cell) -> int:
    return max(1, int(cell.resources.cpus))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(RAY_INSTALL) from None
    return ray


def _ray_cell(command: list[str], folder: str, timeout: float) -> dict:
    result = run_cell(command, folder, timeout)
    if result["rc"] not in FINAL_CODES:
        raise CellCrashed(f"exit {result['rc']} (attempt {result['attempt']}): {result['last_line']}")
    return result


def _local_resources() -> dict:
    """Custom resources this machine offers a local Ray: TensorRT when it imports (with a GPU)."""
    from ..gpu import tensorrt_probe

    try:
        return {"TensorRT": 1} if tensorrt_probe().ok else {}
    except Exception:  # a probe that fails means no TensorRT here
        return {}


def _run_ray(sweep: Sweep, todo: list[Cell], address: str, workers: int, tick: Progress,
             threads: int | None) -> None:
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address == "local":
            ray.init(num_cpus=workers, resources=_local_resources(), **kwargs)
        else:
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise BadInputError(f"--ray {address}: cannot join that Ray cluster ({str(err).splitlines()[0]}); "
                                    f"give the address `ray start --head` printed, or --ray local") from None
    try:
        _check_feasible(ray, todo, address)
        remote = ray.remote(_ray_cell)
        pending = {}
        starts = {}
        for cell in todo:
            r = cell.resources
            ref = remote.options(num_cpus=r.cpus, num_gpus=r.gpus, resources=r.custom or None,
                                 max_retries=sweep.retries, retry_exceptions=[CellCrashed],
                                 name=f"cell {cell.key}").remote(cell.command(threads or _cpus(cell)),
                                                                 str(cell.folder), sweep.timeout)
            pending[ref] = cell
            starts[ref] = _now()
        done = 0
        tick(done, len(todo), f"{len(todo)} cells on Ray ({address})")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    result = ray.get(ref)
                    status, error = _final_status(result["rc"]), None
                except Exception as err:  # the task's retries are spent: a crash each time, or dead workers
                    result, status = None, "failed"
                    error = f"{type(err).__name__}: " + (str(err).strip().splitlines() or [""])[-1][:300]
                _record(cell, status, result, error, starts[ref])
                done += 1
                tick(done, len(todo), f"{cell.key}: {status}")
    finally:
        if started_here:
            ray.shutdown()


def _check_feasible(ray, cells: list[Cell], address: str) -> None:
    """Refuse before any cell starts when no node offers what a cell asks (Ray would wait for ever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for cell in cells:
        r = cell.resources
        need = {"CPU": r.cpus, "GPU": r.gpus, **r.custom}
        if not any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
            wanted = ", ".join(f"{k}={v:g}" for k, v in need.items() if v)
            raise MissingDependencyError(f"{cell.key}: no node of the Ray cluster ({address}) offers {wanted}; "
                                         f"start one with `ray start --num-gpus N --resources "
                                         f"'{json.dumps(r.custom or {'TensorRT': 1})}'`, or leave {cell.backend} "
                                         f"out of the matrix")


def write_results(sweep: Sweep, skipped: int, ran: int, seconds: float, ray: str, workers: int) -> dict:
    records = [read_cell(c) or {"cell": c.key, "model": c.model, "verb": c.verb, "backend": c.backend,
                                "status": "not run"} for c in sweep.cells]
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    data = {"sweep": str(sweep.path), "out": str(sweep.out), "executor": "pool" if ray == "off" else f"ray:{ray}",
            "workers": workers, "cells": records, "counts": counts, "ran": ran, "skipped_finished": skipped,
            "wall_seconds": round(seconds, 2), "utc": _now(),
            "passed": all(r["status"] == "passed" for r in records)}  # a FAILED verdict fails the sweep too
    write_text_atomic(sweep.out / "sweep.json", json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")
    write_text_atomic(sweep.out / "sweep.md", _markdown(data))
    write_text_atomic(sweep.out / "report.html", _html(data))
    return data


def _markdown(data: dict) -> str:
    lines = [f"# Sweep {data['sweep']}", "",
             f"{len(data['cells'])} cells: " + ", ".join(f"{n} {s}" for s, n in data["counts"].items())
             + f"; this run ran {data['ran']} and skipped {data['skipped_finished']} finished, in "
               f"{data['wall_seconds']:.1f} s ({data['executor']}, {data['workers']} workers).", "",
             "| model | verb | backend | status | attempts | seconds | last line |", "|---|---|---|---|---:|---:|---|"]
    for r in data["cells"]:
        lines.append(f"| {r['model']} | {r['verb']} | {r['backend']} | {r['status']} | {r.get('attempts', '')} | "
                     f"{r.get('seconds') or ''} | {(r.get('last_line') or '').replace('|', '/')[:160]} |")
    return "\n".join(lines) + "\n"


def _html(data: dict) -> str:
    import html

    from ..pipelines.report_html import CSS

    e = html.escape
    rows = "".join(
        f"<tr class='{'' if r['status'] == 'passed' else 'over'}'><td>{e(r['model'])}</td><td>{e(r['verb'])}</td>"
        f"<td>{e(r['backend'])}</td><td><b>{e(r['status'])}</b></td><td class='n'>{r.get('attempts', '')}</td>"
        f"<td class='n'>{r.get('seconds') or ''}</td><td>{e(r.get('last_line') or '')}</td></tr>"
        for r in data["cells"])
    counts = ", ".join(f"{n} {e(s)}" for s, n in data["counts"].items())
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>deploy sweep</title>"
            f"<style>{CSS}</style></head><body><main><h1>Sweep {e(data['sweep'])}</h1>"
            f"<p class='sub'>{len(data['cells'])} cells: {counts}. This run ran {data['ran']}, skipped "
            f"{data['skipped_finished']} finished, in {data['wall_seconds']:.1f} s ({e(data['executor'])}, "
            f"{data['workers']} workers).</p><table><tr><th>model</th><th>verb</th><th>backend</th><th>status</th>"
            f"<th>attempts</th><th>seconds</th><th>last line</th></tr>{rows}</table></main></body></html>\n")
