"""The public API (`import deploy`): the CLI's verbs as functions, with the CLI's option names and defaults,
returning the report the CLI prints, raising our errors instead of exiting."""

from __future__ import annotations

import inspect

import onnx
import pytest
import torch
from torch import nn

import deploy
from deploy.cli import app
from deploy.errors import BadInputError, CheckFailedError

VERBS = ("export", "fuse", "quantize", "prune", "check", "bench", "debug", "build", "pipeline", "verify", "sweep")
# CLI-only options: where the report goes, how it renders, and renamed spellings kept for old scripts
CLI_ONLY = {"json_path", "csv_path", "md_path", "plot", "junit", "extract", "top", "localize", "keep_float_old"}


def cli_params(verb: str) -> dict[str, object]:
    import typer.main

    command = typer.main.get_command(app).commands[verb]
    return {p.name: p.default for p in command.params if not p.name.startswith("old_") and p.name not in CLI_ONLY}


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_is_a_function_with_the_cli_names_and_defaults(verb):
    fn = getattr(deploy, verb)
    signature = inspect.signature(fn)
    takes_preprocess = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    wrong = []
    for name, default in cli_params(verb).items():
        if name in deploy.api.PREPROCESS_KEYS and takes_preprocess:
            continue
        if name == "artifacts":  # bench's positional list
            continue
        if name not in signature.parameters:
            wrong.append(f"deploy.{verb} lacks the CLI option {name}")
            continue
        got = signature.parameters[name].default
        if got is not inspect.Parameter.empty and not (str(got) == str(default) or got == default):
            wrong.append(f"deploy.{verb}({name}=…): {got!r}, CLI {default!r}")
    assert not wrong, "\n".join(wrong)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def trained_tiny() -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))  # BN statistics move off (0, 1)
    return model.eval()


def test_a_module_in_memory_exports_verified_and_checks(tmp_path):
    model = trained_tiny()
    out = tmp_path / "n.onnx"
    report = deploy.export(model, out, shape=(1, 3, 32, 32))
    assert out.is_file() and report.passed and report.check is not None
    assert report.check.worst().max_rel <= 1e-5
    assert onnx.load(str(out)).graph.input[0].name == "input"
    assert "PASSED" in repr(report) and report.to_dict()["passed"] is True
    checked = deploy.check(model, str(out), shape=(1, 3, 32, 32))
    assert checked.passed is True
    assert checked.to_dict()["passed"] is True


def test_errors_raise_instead_of_exiting(tmp_path):
    model = trained_tiny()
    with pytest.raises(BadInputError, match="shape"):
        deploy.export(model, tmp_path / "n.onnx")
    with pytest.raises(BadInputError, match=r"\.onnx"):
        deploy.export(model, tmp_path / "n.txt", shape=(1, 3, 32, 32))
    with pytest.raises(BadInputError):
        deploy.check("no-such-model-anywhere", "also-missing.onnx")
    assert not (tmp_path / "n.onnx").exists()


def test_a_failed_check_is_a_report_and_a_failed_export_raises(tmp_path):
    model = trained_tiny()
    out = tmp_path / "n.onnx"
    deploy.export(model, out, shape=(1, 3, 32, 32))
    other = trained_tiny()
    with torch.no_grad():
        other.head.bias += 1.0
    report = deploy.check(other, str(out), shape=(1, 3, 32, 32))
    assert report.passed is False and "FAILED" in report.summary()

    class Sabotaged(Tiny):  # exports one function, runs another: the export's proof must catch it
        def forward(self, x):
            y = super().forward(x)
            return y + 1.0 if torch.onnx.is_in_onnx_export() else y

    bad = Sabotaged()
    bad.load_state_dict(model.state_dict())
    with pytest.raises(CheckFailedError) as caught:
        deploy.export(bad.eval(), tmp_path / "bad.onnx", shape=(1, 3, 32, 32))
    assert caught.value.report.passed is False
    assert not (tmp_path / "bad.onnx").exists()


def test_the_worked_example_in_docs_api_md_runs_as_written(tmp_path, monkeypatch):
    """docs/api.md's Python blocks, executed in order in an empty folder: the example must keep working."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    blocks = [b for b in text.split("```python\n")[1:]]
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block.split("```")[0], "docs/api.md", "exec"), {"__name__": "docs_api"})
    assert (tmp_path / "net.onnx").is_file() and (tmp_path / "net.fused.onnx").is_file()
    fused = onnx.load(str(tmp_path / "net.fused.onnx"))
    assert not [n for n in fused.graph.node if n.op_type == "BatchNormalization"]
    assert not (tmp_path / "resnet18.txt").exists()


def test_every_verb_runs_through_the_api(tmp_path):
    """The verbs not exercised above, each once on a small real case (the CLI tests cover their options)."""
    import json

    model = trained_tiny()
    onnx_path = tmp_path / "t.onnx"
    deploy.export(model, onnx_path, shape=(1, 3, 32, 32))
    fused = deploy.fuse(str(onnx_path), tmp_path / "t.fused.onnx")
    assert fused.passed and fused.after["nodes"] <= fused.before["nodes"]
    debugged = deploy.debug(str(onnx_path), str(tmp_path / "t.fused.onnx"), samples=2)
    assert debugged.passed and debugged.to_dict()["passed"] is True
    timed = deploy.bench(str(onnx_path), str(tmp_path / "t.fused.onnx"), min_runs=3, min_time=0.05, max_time=2,
                         memory="off", gap_ms=0)
    assert len(timed.results) == 2 and all(r.stats.median > 0 for r in timed.results)
    pruned = deploy.prune("tiny-resnet", tmp_path / "p.onnx", ratio=0.3, measure=False, samples=8)
    assert (tmp_path / "p.onnx").is_file() and pruned.outcome.macs_after < pruned.outcome.macs_before
    plan = deploy.build(str(onnx_path), tmp_path / "t.engine", dry_run=True, api=10)
    assert plan.api == 10 and not (tmp_path / "t.engine").exists()
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('[matrix]\nmodels = ["tiny-resnet"]\nverbs = ["export"]\nbackends = ["ort-cpu"]\n')
    cells = deploy.sweep(sweep_file, output=tmp_path / "sweep", dry_run=True)
    assert len(cells.cells) == 1
    out = tmp_path / "pipe"
    shipped = deploy.pipeline("tiny-resnet", out, samples=16, eval_samples=16, prune_latency="none", min_time=0.2,
                              max_drop=50)
    assert (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text())["candidates"]
    proof = deploy.verify(out / "manifest.json", latency=False)
    assert proof.passed, proof.summary()
    assert repr(shipped).startswith("<PipelineReport: ") and shipped.summary().split()[0] in ("PASSED", "FAILED")
