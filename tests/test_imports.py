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
    """models, passes and calib import nothing of ours — with one exception: the zoo's
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


# ------------------------------------------------------------------------------------------- layers

# deploy's layers, top first: a module may import its own layer's modules (no circle) and any layer below.
# The pipeline drives the jobs, so it sits above them; the sweep runs verbs in child processes and reads
# the pipeline's HTML style. deploy/__init__ is the public API (deploy.api), reached only from above.
LAYERS = (
    ("cli", ("deploy.cli",)),
    ("api", ("deploy", "deploy.api")),
    ("sweep", ("deploy.sweeps",)),
    ("pipeline", ("deploy.pipelines",)),
    ("jobs", ("deploy.jobs",)),
    ("harness", ("deploy.harness",)),
    ("backends", ("deploy.backends",)),
    ("artifacts", ("deploy.artifacts",)),
    ("machine", ("deploy.errors", "deploy._version", "deploy.environment", "deploy.gpu", "deploy.ort", "deploy.ov",
                 "deploy.reporting")),
    ("leaves", ("deploy.passes", "deploy.models", "deploy.calib")),
)


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "deploy" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def deploy_imports() -> dict[str, set[str]]:
    """Every import of a deploy module by a module under deploy/, at module level or inside a function."""
    paths = {module_name("deploy", p): p for p in (ROOT / "deploy").rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in paths}
    for module, path in paths.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[:2] in (["deploy", "passes"], ["deploy", "models"], ["deploy", "calib"]):
                    edges[module].add(".".join(target.split(".")[:2]))
                    continue
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges[module].add(target)
    return edges


def test_imports_follow_the_layers():
    """cli → API → sweep → pipeline → jobs → harness → backends → artifacts → machine → passes/models/calib."""
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
             for m, targets in deploy_imports().items() for t in sorted(targets) if layer_of(t) < layer_of(m)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_circle():
    edges = deploy_imports()
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        trail.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return trail[trail.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        trail.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            circle = visit(module)
            assert circle is None, "import circle: " + " → ".join(circle)


def test_few_modules_loose_at_the_top():
    loose = sorted(p.name for p in (ROOT / "deploy").glob("*.py"))
    assert len(loose) <= 12, loose
    for package in (p for p in (ROOT / "deploy").iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        assert len(doc) > 80 and "import" in doc, f"{package.name}/__init__.py: say what it holds and may import"


def test_import_deploy_and_help_do_not_load_torch(tmp_path):
    """`import deploy` and `deploy --help` stay quick: the verbs (and torch) load when one is first used."""
    code = ("import sys\nimport deploy\nfrom deploy.cli import app\nfrom typer.testing import CliRunner\n"
            "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
            "assert CliRunner().invoke(app, ['quantize', '--help']).exit_code == 0\n"
            "print('torch' in sys.modules)\n"
            "deploy.export\nprint('torch' in sys.modules)\n")
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
