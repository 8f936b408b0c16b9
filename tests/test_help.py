"""Help text is shown as written: every option's and argument's help string appears in its verb's --help
(no markup parser eats a literal [matrix] or [args]), and the examples keep one command per line."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from deploy.cli import app

COMMAND = typer.main.get_command(app)


def squeeze(text: str) -> str:
    """Without whitespace: the terminal's wrapping (and its hyphen breaks) cannot hide or fake a match."""
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("verb", sorted(COMMAND.commands))
def test_every_help_string_appears_as_written(verb):
    shown = CliRunner().invoke(app, [verb, "--help"], terminal_width=100)
    assert shown.exit_code == 0, shown.output
    page = squeeze(shown.output)
    missing = [p.name for p in COMMAND.commands[verb].params if getattr(p, "help", None)
               and not getattr(p, "hidden", False) and squeeze(p.help) not in page]
    assert not missing, f"deploy {verb} --help lacks the help of {missing}"


def test_sweep_help_keeps_its_table_names():
    shown = CliRunner().invoke(app, ["sweep", "--help"], terminal_width=100)
    assert "[matrix]" in shown.output and "[args]" in shown.output and "[resources.BACKEND]" in shown.output


def test_examples_stay_one_command_per_line():
    shown = CliRunner().invoke(app, ["export", "--help"], terminal_width=60)
    lines = [line.strip() for line in shown.output.splitlines() if line.strip().startswith("$ deploy export")]
    assert len(lines) == 3 and lines[2].endswith("-w ckpt.pt"), shown.output
