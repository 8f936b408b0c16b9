"""Check the TensorRT API names deploy uses against the real bindings of TensorRT 10 and 11.

TensorRT cannot be installed here, but its Python bindings wheels (``tensorrt-cu12-bindings``, 1.3 MB)
are on the package registry; their ``tensorrt.so`` holds the name of every class, method, property and
enum value pybind11 registers, as C strings. A linker may store a string as the tail of a longer one
("Logger" inside "ILogger\\0"), so a name counts as present when some string of the library equals it or
ends with it; names defined in Python by the wheel's ``__init__.py`` (``nptype``) count too.

The names deploy uses are read from its source (deploy/backends/trt_build.py, deploy/backends/trt_runner.py) by the
convention those modules state: attribute chains on ``trt`` or on a variable holding a TensorRT object
(``builder``, ``config``, ``engine``, …, or ``self._engine``), and the methods of classes that subclass a
``trt.`` class (a calibrator's overrides). Functions named ``_legacy_*`` run on TensorRT 10 only; every
other one runs on both, so its names must exist in 11 as well.

    python scripts/trt_bindings.py            # fetch both wheels (cached), print the check, exit 1 on a miss
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

WHEELS = {10: "10.16.1.11", 11: "11.4.0.106"}
PACKAGE = "tensorrt-cu12-bindings"
ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "deploy" / "backends" / "trt_build.py", ROOT / "deploy" / "backends" / "trt_runner.py")
TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "profile", "timing_cache", "logger", "serialized",
               "runtime", "engine", "context"}


class FetchError(RuntimeError):
    """The wheel could not be fetched (no registry): the caller skips with this reason."""


def cache_dir() -> Path:
    env = os.environ.get("DEPLOY_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "deploy") / "trt-bindings"


def fetch(version: str) -> Path:
    """The folder holding ``tensorrt.so`` and ``__init__.py`` of the bindings wheel ``version`` (pip
    downloads it once from the registry into the cache)."""
    folder = cache_dir() / version
    if (folder / "tensorrt.so").is_file() and (folder / "__init__.py").is_file():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "-q", "-d", tmp,
                               f"{PACKAGE}=={version}"], capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            lines = [line for line in (done.stderr or done.stdout).splitlines()
                     if line.strip() and "is ignored" not in line]
            raise FetchError(f"pip download {PACKAGE}=={version} failed: {lines[-1] if lines else 'no wheel'}")
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in ("tensorrt.so", "__init__.py"):
                source = next(n for n in wheel.namelist() if n.endswith(f"tensorrt_bindings/{member}"))
                part = folder / f".{member}.part"
                part.write_bytes(wheel.read(source))
                part.replace(folder / member)
    return folder


@dataclass
class ApiNames:
    """What one bindings wheel defines."""

    version: str
    strings: set[str]
    python_names: set[str]
    _suffixes: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path, version: str) -> ApiNames:
        data = (folder / "tensorrt.so").read_bytes()
        strings = {s.decode("latin-1") for s in data.split(b"\0") if 2 <= len(s) <= 200}
        tree = ast.parse((folder / "__init__.py").read_text())
        python = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        python |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        return cls(version, strings, python)

    def has(self, name: str) -> bool:
        if name in self.python_names or name in self.strings:
            return True
        if name not in self._suffixes:
            self._suffixes[name] = any(s.endswith(name) for s in self.strings)
        return self._suffixes[name]


@dataclass(frozen=True)
class Use:
    name: str
    where: str  # file:line
    function: str
    legacy: bool  # in a _legacy_* function: TensorRT 10 only


def _chain(node: ast.AST) -> list[str]:
    """``a.b().c`` → ["a", "b", "c"] (calls are looked through); [] when the root is not a name."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return parts[::-1]
        else:
            return []


def _api_part(parts: list[str]) -> list[str]:
    if len(parts) >= 2 and parts[0] in TRT_OBJECTS:
        return parts[1:]
    if len(parts) >= 3 and parts[0] == "self" and parts[1].startswith("_") and parts[1][1:] in TRT_OBJECTS:
        return parts[2:]
    return []


def uses_in_source(text: str, filename: str = "<source>") -> list[Use]:
    """Every TensorRT API name ``text`` uses, with where and on which path."""
    found: list[Use] = []

    def visit(node: ast.AST, function: str, legacy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name if function == "" else function, legacy or child.name.startswith("_legacy_"))
                continue
            if isinstance(child, ast.ClassDef):
                if any(_chain(base)[:1] == ["trt"] for base in child.bases):
                    for item in child.body:
                        if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                            found.append(Use(item.name, f"{filename}:{item.lineno}", function or child.name, legacy))
                visit(child, function, legacy)
                continue
            if isinstance(child, ast.Attribute):
                for name in _api_part(_chain(child)):
                    if not name.startswith("__") or name == "__version__":
                        found.append(Use(name, f"{filename}:{child.lineno}", function, legacy))
            visit(child, function, legacy)

    visit(ast.parse(text), "", False)
    unique = {(u.name, u.function, u.legacy): u for u in found}
    return sorted(unique.values(), key=lambda u: (u.where, u.name))


def deploy_uses() -> list[Use]:
    uses = []
    for path in SOURCES:
        uses += uses_in_source(path.read_text(), str(path.relative_to(ROOT)))
    return uses


def problems(uses: list[Use], v10: ApiNames, v11: ApiNames, removed_in_11: tuple[str, ...]) -> list[str]:
    """Names missing from the wheel of a path that runs them, and removed names used outside _legacy_*."""
    out = []
    for use in uses:
        if not v10.has(use.name):
            out.append(f"{use.where}: '{use.name}' ({use.function}) is not in TensorRT {v10.version}")
        if not use.legacy and not v11.has(use.name):
            out.append(f"{use.where}: '{use.name}' ({use.function}) runs on TensorRT 11 but is not in {v11.version}")
        if not use.legacy and use.name in removed_in_11:
            out.append(f"{use.where}: '{use.name}' ({use.function}) was removed in TensorRT 11; only _legacy_* "
                       f"functions may use it")
    for name in removed_in_11:
        if v11.has(name):
            out.append(f"'{name}' is listed as removed in TensorRT 11 but {v11.version} defines it")
    return out


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from deploy.backends.trt_build import REMOVED_IN_11

    try:
        v10, v11 = (ApiNames.load(fetch(WHEELS[m]), WHEELS[m]) for m in (10, 11))
    except FetchError as err:
        print(f"skipped: {err}")
        return 0
    uses = deploy_uses()
    for path_name, chosen in (("TensorRT 10 only (_legacy_*)", [u for u in uses if u.legacy]),
                              ("TensorRT 10 and 11", [u for u in uses if not u.legacy])):
        names = sorted({u.name for u in chosen})
        print(f"{path_name}: {len(names)} names\n  " + ", ".join(names))
    found = problems(uses, v10, v11, REMOVED_IN_11)
    for line in found:
        print(f"MISSING {line}")
    print(f"{'FAILED' if found else 'PASSED'}: {len({u.name for u in uses})} names checked against "
          f"{PACKAGE} {v10.version} and {v11.version}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
