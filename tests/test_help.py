"""Help text is shown as written: every option's and argument's help string appears in its verb's --help
(rich's markup parser no longer eats a literal [matrix] or [args]), and each example starts its own line."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from deploy.cli import app

COMMAND = typer.main.get_command(app)


def squeeze(text: str) -> str:
    """Without whitespace and rich's panel borders: the terminal's wrapping cannot hide or fake a match."""
    return re.sub(r"[\s│╭╮╰╯─]+", "", text)


def as_written(help_text: str) -> str:
    """The help as the verb's author wrote it (the CLI escapes rich markup, \\[ for [, at registration)."""
    return re.sub(r"\\(\[)", r"\1", help_text)


@pytest.mark.parametrize("verb", sorted(COMMAND.commands))
def test_every_help_string_appears_as_written(verb):
    shown = CliRunner().invoke(app, [verb, "--help"], env={"COLUMNS": "240"})  # no long token cut by rich
    assert shown.exit_code == 0, shown.output
    page = squeeze(shown.output)
    missing = [p.name for p in COMMAND.commands[verb].params if getattr(p, "help", None)
               and not getattr(p, "hidden", False) and squeeze(as_written(p.help)) not in page]
    assert not missing, f"deploy {verb} --help lacks the help of {missing}"


def test_sweep_help_keeps_its_table_names():
    shown = CliRunner().invoke(app, ["sweep", "--help"], terminal_width=100)
    assert "[matrix]" in shown.output and "[args]" in shown.output and "[resources.BACKEND]" in shown.output


def test_examples_each_start_a_line():
    shown = CliRunner().invoke(app, ["export", "--help"], terminal_width=100)
    lines = [line.strip() for line in shown.output.splitlines() if line.strip().startswith("$ deploy export")]
    assert len(lines) == 4, shown.output
    assert "(num_classes=10)" in squeeze(shown.output)  # a literal call in an example is not markup either
