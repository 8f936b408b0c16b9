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
    from deploy.artifacts.spec import load_artifact
    from deploy.jobs.export import export_onnx

    path = tmp_path_factory.mktemp("tiny") / "tiny-resnet.onnx"
    export_onnx(load_artifact("tiny-resnet"), path)
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A fresh cache folder for the session: the digits nets are trained cold, once."""
    return tmp_path_factory.mktemp("deploy-cache")


@pytest.fixture(scope="session")
def trained(cache_dir):
    """Both digits nets, trained cold (the cache folder is new), shared by every test that needs them."""
    from deploy.jobs import digits

    return {name: digits.train_digits(name, cache_dir=cache_dir) for name in digits.MODELS}


@pytest.fixture(scope="session")
def ppocr_models():
    """The PP-OCR files in the cache: `make setup` put them there; a bare `pytest` fetches them here (test
    set-up, with pip from the registry), never while a verb runs."""
    from deploy.artifacts import ppocr

    return ppocr.fetch(say=lambda _m: None)
