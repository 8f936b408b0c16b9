"""Shared fixtures: the CLI in-process, and small exported models built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.cli import app


class Cli:
    """Runs `deploy …` in-process and returns click's Result (exit_code, stdout, stderr)."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """tiny-resnet exported (and verified) once for the session."""
    from deploy.export import export_onnx
    from deploy.spec import load_artifact

    path = tmp_path_factory.mktemp("tiny") / "tiny-resnet.onnx"
    export_onnx(load_artifact("tiny-resnet"), path)
    return path
