"""Every command's help follows click's conventions and says what is true.

Rendered through click's testing runner for every command, and through the
installed ``cdss`` script for the top level and ``--version``.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import cdss
from cdss.cli import app
from cdss.cli._help import summary

RUNNER = CliRunner()
# a Python type shown as a metavar: <bool>, <str>, <list[Path]>, <int>, <text|json>
# (a placeholder in help text such as <folder>/<id> is not one)
TYPE_METAVAR = re.compile(
    r"<(?:bool|str|int|float|path|Path|datetime|list\[[^\]]*\]|[\w-]+(?:\|[\w-]+)+)>")
SENTENCE_END = (".", ")", ":")


def _commands() -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    ctx = group.make_context("cdss", ["--help"], resilient_parsing=True)
    return {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}


def _help(args: list[str]) -> str:
    result = RUNNER.invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def _paragraphs(help_text: str) -> list[str]:
    return [" ".join(p.split()) for p in help_text.split("\n\n") if p.strip()]


def _problems(name: str, command: Any, text: str) -> list[str]:
    """What is wrong with ``text``, the rendered help of ``command``."""
    problems = [f"{name}: Python type as metavar {m!r}" for m in TYPE_METAVAR.findall(text)]
    usage = text.splitlines()[0]
    if "{" in usage:
        problems.append(f"{name}: usage line not click's: {usage!r}")
    for param in command.params:
        label = "/".join(param.opts) or param.name
        if not (param.help or "").strip():
            problems.append(f"{name}: {label} has no help text")
        if getattr(param, "param_type_name", "") != "option":
            continue
        line = next((ln for ln in text.splitlines()
                     if ln.strip().startswith(param.opts[0] + " ")), "")
        if not line:
            problems.append(f"{name}: {label} not shown")
        elif getattr(param, "is_flag", False):
            # a flag takes no value: only its names, then the help
            shown = line.strip().split("  ")[0]
            names = " / ".join([*param.opts, *param.secondary_opts])
            if shown != names.split(" / ")[0] and shown != names:
                problems.append(f"{name}: flag {label} shown with a value: {line.strip()!r}")
        else:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if isinstance(annotation, type) and issubclass(annotation, Enum):
                wanted = "[" + "|".join(str(m.value) for m in annotation) + "]"
                if wanted not in line:
                    problems.append(f"{name}: choices of {label} not shown as {wanted}")
    for paragraph in _paragraphs(inspect_help(command)):
        if not paragraph.endswith(SENTENCE_END):
            problems.append(f"{name}: help paragraph cut mid-sentence: {paragraph!r}")
    return problems


def inspect_help(command: Any) -> str:
    return inspect.cleandoc(command.help or "")


def test_every_command_help_follows_click_conventions() -> None:
    problems: list[str] = []
    commands = _commands()
    assert {"evaluate", "serve", "screen", "diff", "test-ruleset"} <= set(commands)
    for name, command in commands.items():
        problems += _problems(name, command, _help([name]))
    assert problems == []


def test_top_level_help_lists_each_command_summary_whole() -> None:
    text = _help([])
    assert TYPE_METAVAR.findall(text) == []
    # compared without whitespace: the formatter wraps lines, at hyphens too
    listed = re.sub(r"\s+", "", text.split("Commands:")[1])
    for name, command in _commands().items():
        whole = summary(command.help)
        assert whole.endswith(SENTENCE_END), name
        assert re.sub(r"\s+", "", name + whole) in listed, name
    assert "..." not in listed


def test_serve_help_names_the_three_hooks() -> None:
    text = re.sub(r"\s+", "", _help(["serve"]))
    for hook in ("patient-view", "order-select", "order-sign"):
        assert hook in text


def test_version_is_the_library_version() -> None:
    result = RUNNER.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"cdss {cdss.__version__}"


def test_the_checks_catch_what_they_look_for() -> None:
    # the problems seen before: type metavars, a flag with a value, choices as text,
    # a usage line with braces, a summary cut at a fixed width
    command = _commands()["evaluate"]
    broken = ("Usage: cdss evaluate [OPTIONS] {files}...\n\n  Evaluate one patient\n\n"
              "Options:\n  --format <str>  text or json\n  --engine TEXT  which\n")
    found = "\n".join(_problems("evaluate", command, broken))
    assert "'<str>'" in found
    assert "usage line" in found
    assert "choices of --format" in found
    flag = _commands()["screen"]
    found = "\n".join(_problems("screen", flag, "Usage: cdss screen\n\n  --resume BOOLEAN  x\n"))
    assert "flag --resume shown with a value" in found
    assert summary("Evaluate one\n    record.\n\n    More.") == "Evaluate one record."


def test_installed_script_shows_the_same_help_and_version() -> None:
    script = shutil.which("cdss", path=str(Path(sys.executable).parent))
    assert script is not None, "the cdss script is not installed: pip install -e ."
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert TYPE_METAVAR.findall(out) == []
    assert "--version" in out
    version = subprocess.run([script, "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    assert version.strip() == f"cdss {cdss.__version__}"


@pytest.mark.parametrize("args", [["evaluate", "x.json", "--format", "xml"],
                                  ["evaluate", "x.json", "--engine", "fast"]])
def test_a_value_outside_the_choices_is_refused_by_name(args: list[str]) -> None:
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 2
    assert args[-1] in result.output
