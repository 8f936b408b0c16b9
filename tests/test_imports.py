"""Import hygiene: no top-level `models`/`calib`, one-way imports, no GPU packages needed."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(pkg: str, path: Path) -> str:
    """deploy/cli.py → deploy.cli; models/resnet.py → deploy.models.resnet; x/__init__.py → x."""
    parts = list(path.relative_to(ROOT / pkg).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    prefix = ["deploy"] if pkg == "deploy" else ["deploy", pkg]
    return ".".join(prefix + parts)


PACKAGES = ("deploy", "models", "passes", "calib")
MODULES = sorted(module_name(pkg, p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def test_everything_imports_without_tensorrt_or_pycuda(tmp_path):
    blocker = (
        "import sys\n"
        "for name in ('tensorrt', 'pycuda', 'pycuda.driver', 'pycuda.autoinit', 'cuda', 'cupy'):\n"
        "    sys.modules[name] = None  # any import of these now raises ImportError\n"
    )
    code = blocker + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES)
    code += "from deploy.cli import app\nfrom typer.testing import CliRunner\n"
    code += "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\nprint('ok')\n"
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_no_top_level_models_or_calib(tmp_path):
    done = run_python("import importlib.util as u; print(u.find_spec('models'), u.find_spec('calib'))", tmp_path)
    assert done.stdout.strip() == "None None", done.stdout


@pytest.mark.parametrize("pkg", ["models", "passes", "calib"])
def test_leaf_packages_import_nothing_of_ours(pkg):
    """DESIGN.md §2: models, passes and calib import nothing of ours — with one exception: the zoo's
    train-time blocks fold their branches with the maths in passes/kernels.py (written once)."""
    ours = ("deploy", "models", "passes", "calib")
    for path in (ROOT / pkg).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    assert (node.module or "").split(".")[0] not in ours, f"{path}: absolute import of ours"
                elif node.level >= 2:  # reaches out of the package
                    allowed = pkg == "models" and (
                        node.module == "passes.kernels" or (node.module == "passes" and
                                                            [a.name for a in node.names] == ["kernels"]))
                    assert allowed, f"{path}: imports {'.' * node.level}{node.module} from outside {pkg}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in ours, path


def test_gpu_packages_only_imported_lazily():
    """No module imports tensorrt/pycuda at top level."""
    for pkg in ("deploy", "models", "passes", "calib"):
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for name in names:
                    assert name.split(".")[0] not in ("tensorrt", "pycuda", "cupy"), f"{path}: {name}"
