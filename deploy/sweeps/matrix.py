"""`deploy sweep SWEEP.toml`: a matrix of models × verbs × backends, one cell each, results cell by cell.

The sweep file (TOML)::

    out = "sweep-results"        # results folder (relative to the sweep file); --out wins
    retries = 2                  # attempts after the first, for a cell that crashes or whose worker dies
    timeout = 3600               # seconds per attempt

    [matrix]
    models = ["tiny-resnet", "tiny-mobilenet", "nets/net.onnx"]
    verbs = ["export", "quantize"]        # export fuse quantize prune bench pipeline build
    backends = ["ort-cpu"]

    [args]                                 # extra arguments of each verb, as on its command line
    quantize = ["--samples", "32"]

    [resources.trt]                        # what a cell on this backend asks of the cluster
    cpus = 2
    gpus = 1
    custom = { TensorRT = 1 }              # so a TensorRT cell lands only on a node that offers it

Everything is checked before any cell starts; a bad entry is named with its line. Each cell runs the real
CLI verb in a child process (its own interpreter, so a crash or a killed worker takes one cell down, never
the sweep) and writes into ``OUT/cells/<cell>/``; the driver alone writes ``cell.json`` when a cell ends, so
a finished cell is never lost and a rerun skips it (resume).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ..errors import BadInputError

VERBS = ("export", "fuse", "quantize", "prune", "bench", "pipeline", "build")
TOP_KEYS = {"out", "retries", "timeout", "matrix", "args", "resources"}
MATRIX_KEYS = {"models", "verbs", "backends"}
RESOURCE_KEYS = {"cpus", "gpus", "custom"}
# exit codes of a verb that end a cell (a verdict or bad input: retrying changes nothing); others are retried
FINAL_CODES = {0: "passed", 1: "verdict-failed", 2: "bad-input"}
DEFAULT_RESOURCES = {"trt": {"cpus": 1, "gpus": 1, "custom": {"TensorRT": 1}},
                     "ort-cuda": {"cpus": 1, "gpus": 1, "custom": {}},
                     "torch-cuda": {"cpus": 1, "gpus": 1, "custom": {}}}
# which verbs take --threads / --backend / --target (quantize's name for a backend)
THREADED = {"export", "fuse", "quantize", "prune", "bench", "pipeline"}


@dataclass(frozen=True)
class Resources:
    cpus: float = 1
    gpus: float = 0
    custom: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"cpus": self.cpus, "gpus": self.gpus, "custom": dict(self.custom)}


@dataclass
class Cell:
    model: str
    verb: str
    backend: str
    args: list[str]
    resources: Resources
    folder: Path

    @property
    def key(self) -> str:
        return f"{self.model} · {self.verb} · {self.backend}"

    def command(self, threads: int | None = None) -> list[str]:
        """The verb's command line (program name excluded), writing into the cell folder."""
        d = self.folder
        v = self.verb
        out = {"export": ["-o", str(d / "model.onnx")], "fuse": ["-o", str(d / "fused.onnx")],
               "quantize": ["-o", str(d / "quantized.onnx"), "--target", _target(self.backend)],
               "prune": ["-o", str(d / "pruned.onnx"), "--backend", self.backend],
               "bench": ["--backend", self.backend], "pipeline": ["-o", str(d / "pipeline"), "--backend", self.backend],
               "build": ["-o", str(d / "model.plan")]}[v]
        extra = list(self.args)
        if v == "prune" and not {"--ratio", "--macs", "--latency"} & set(extra):
            extra = ["--macs", "0.5", *extra]
        threads_args = ["--threads", str(threads)] if threads and v in THREADED and "--threads" not in extra else []
        return [v, self.model, *out, *extra, *threads_args, "--json", str(d / "result.json")]

    def fingerprint(self) -> str:
        """What makes two runs the same cell: the command as written (a changed argument reruns it)."""
        text = json.dumps([self.model, self.verb, self.backend, self.args])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _target(backend: str) -> str:
    return {"ort-cpu": "ort-cpu", "ort-cuda": "ort-cuda", "trt": "trt"}.get(backend, "ort-cpu")


@dataclass
class Sweep:
    path: Path
    out: Path
    retries: int
    timeout: float
    cells: list[Cell]


def _section(lines: list[str], table: str | None) -> tuple[int, int] | None:
    """Line range (0-based, end exclusive) of ``[table]`` (None: the top level, before any table)."""
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[", line)]
    if table is None:
        return 0, headers[0] if headers else len(lines)
    for i in headers:
        if re.match(rf"\s*\[+\s*{re.escape(table)}\s*\]", lines[i]):
            return i, next((j for j in headers if j > i), len(lines))
    return None


def _line_of(text: str, needle: str, table: str | None = None, key: bool = False) -> int:
    """1-based line of ``needle`` in ``text`` within ``[table]`` (None: the top level): as a key
    (``needle =``, or a ``[needle]`` header) when ``key``, else as a quoted value. Comments are not read.
    0 when it is not found."""
    lines = text.splitlines()
    if key and _section(lines, needle if table is None else f"{table}.{needle}") is not None:
        return _section(lines, needle if table is None else f"{table}.{needle}")[0] + 1
    span = _section(lines, table)
    if span is None:
        return 0
    if key:
        pattern = re.compile(rf"^\s*[\"']?{re.escape(needle)}[\"']?\s*=")
    else:
        pattern = re.compile(rf"[\"']{re.escape(needle)}[\"']")
    for i in range(*span):
        if pattern.search(lines[i].split("#", 1)[0]):
            return i + 1
    return 0


def _cell_name(model: str, verb: str, backend: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model.split(":")[0]).name)[:40]
    digest = hashlib.sha256(model.encode()).hexdigest()[:6] if stem != model else ""
    return f"{stem}{'-' + digest if digest else ''}__{verb}__{backend}"


def _known_model(model: str, base: Path) -> bool:
    from ..artifacts.spec import is_onnx_spec, zoo_names

    if model in zoo_names():
        return True
    head = model.split("(")[0]
    path = head.rpartition(":")[0] if ":" in head and not is_onnx_spec(head) else head
    return bool(path) and ((base / path).exists() or Path(path).exists()) and (
        is_onnx_spec(head) or path.endswith(".py") or "." in path)


def load_sweep(path: str | Path, out: str | Path | None = None) -> Sweep:
    """Parse and check a sweep file; any unknown model, verb, backend or key is refused naming its line."""
    from ..backends.registry import BACKENDS

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{path}: no such sweep file; give a .toml file (see deploy sweep --help)")
    text = p.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BadInputError(f"{p}: not valid TOML: {err}") from None

    def bad(line: int, message: str) -> BadInputError:
        return BadInputError(f"{p}:{line}: {message}" if line else f"{p}: {message}")

    for key in data:
        if key not in TOP_KEYS:
            raise bad(_line_of(text, key, None, key=True), f"unknown key '{key}'; a sweep file has "
                      f"{', '.join(sorted(TOP_KEYS))}")
    matrix = data.get("matrix")
    if not isinstance(matrix, dict):
        raise bad(0, "no [matrix] table; give [matrix] with models, verbs and backends")
    for key in matrix:
        if key not in MATRIX_KEYS:
            raise bad(_line_of(text, key, "matrix", key=True), f"unknown key matrix.{key}; [matrix] has models, "
                      f"verbs, backends")
    lists = {}
    for key in ("models", "verbs", "backends"):
        value = matrix.get(key, ["ort-cpu"] if key == "backends" else None)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise bad(_line_of(text, key, "matrix", key=True), f"matrix.{key}: give a non-empty list of strings")
        lists[key] = list(dict.fromkeys(value))
    base = p.parent.resolve()  # cells name absolute paths: the same from any folder, and on every node
    for model in lists["models"]:
        if not _known_model(model, base):
            raise bad(_line_of(text, model, "matrix"), f"unknown model '{model}': not a zoo name (deploy zoo), "
                      f"an existing .onnx file or file.py:factory")
    for verb in lists["verbs"]:
        if verb not in VERBS:
            raise bad(_line_of(text, verb, "matrix"), f"unknown verb '{verb}'; a cell runs one of {', '.join(VERBS)}")
    for backend in lists["backends"]:
        if backend not in BACKENDS:
            raise bad(_line_of(text, backend, "matrix"), f"unknown backend '{backend}'; choose from "
                      f"{', '.join(BACKENDS)}")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise bad(_line_of(text, "args", None, key=True), "[args]: give a table of verb = [arguments]")
    for verb, value in args.items():
        if verb not in VERBS:
            raise bad(_line_of(text, verb, "args", key=True), f"args.{verb}: unknown verb; one of {', '.join(VERBS)}")
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise bad(_line_of(text, verb, "args", key=True), f"args.{verb}: give a list of arguments, e.g. "
                      f"[\"--samples\", \"32\"]")
        for flag in ("-o", "--output", "--json"):
            if flag in [str(v) for v in value]:
                raise bad(_line_of(text, verb, "args", key=True), f"args.{verb}: {flag} is the sweep's to set "
                          f"(each cell writes into its own folder)")
    resources = {}
    table = data.get("resources", {})
    if not isinstance(table, dict):
        raise bad(_line_of(text, "resources", None, key=True), "resources: give [resources.BACKEND] tables")
    for backend, value in table.items():
        line = _line_of(text, backend, "resources", key=True)
        if backend not in BACKENDS:
            raise bad(line, f"resources.{backend}: unknown backend; choose from {', '.join(BACKENDS)}")
        if not isinstance(value, dict) or set(value) - RESOURCE_KEYS:
            raise bad(line, f"resources.{backend}: give cpus, gpus and custom (a table of resource = amount)")
        custom = value.get("custom", {})
        if not isinstance(custom, dict):
            raise bad(line, f"resources.{backend}.custom: give a table, e.g. {{ TensorRT = 1 }}")
        if {"CPU", "GPU", "memory", "object_store_memory"} & set(custom):
            raise bad(line, f"resources.{backend}.custom: CPU, GPU and memory are Ray's own; use cpus and gpus")
        cpus, gpus = value.get("cpus", 1), value.get("gpus", 0)
        numbers = [cpus, gpus, *custom.values()]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and n >= 0 for n in numbers):
            raise bad(line, f"resources.{backend}: amounts must be numbers ≥ 0")
        if any(n > 1 and n != int(n) for n in numbers):
            raise bad(line, f"resources.{backend}: an amount above 1 must be whole (Ray's rule), e.g. 2 not 1.5")
        resources[backend] = Resources(cpus, gpus, dict(custom))
    retries = data.get("retries", 2)
    timeout = data.get("timeout", 3600)
    if not isinstance(retries, int) or not 0 <= retries <= 10:
        raise bad(_line_of(text, "retries", None, key=True), "retries: give a whole number from 0 to 10")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise bad(_line_of(text, "timeout", None, key=True), "timeout: give seconds per attempt, > 0")
    folder = Path(out).resolve() if out is not None else base / str(data.get("out", f"{p.stem}-results"))
    cells = []
    for model in lists["models"]:
        model_arg = model if Path(model).is_absolute() or not (base / model.split(":")[0]).exists() \
            else str(base / model)
        for verb in lists["verbs"]:
            for backend in lists["backends"]:
                res = resources.get(backend) or Resources(**DEFAULT_RESOURCES.get(backend, {}))
                cells.append(Cell(model_arg, verb, backend, [str(a) for a in args.get(verb, [])], res,
                                  folder / "cells" / _cell_name(model, verb, backend)))
    return Sweep(p, folder, retries, float(timeout), cells)


def read_cell(cell: Cell) -> dict | None:
    path = cell.folder / "cell.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished(cell: Cell) -> bool:
    """A cell a rerun skips: it ended (passed, or a verdict or bad-input exit) with the same command."""
    record = read_cell(cell)
    return bool(record) and record.get("status") in FINAL_CODES.values() \
        and record.get("fingerprint") == cell.fingerprint()
