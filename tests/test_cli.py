"""The command line's foundation commands: --help, info, check."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from transfusion.cli import app

runner = CliRunner()


def test_help_lists_the_command_groups():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for word in ("info", "check", "run"):
        assert word in result.output


def test_info_json_has_versions_and_build():
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["torch"] and data["threads"] >= 1
    assert "cpu_capability" in data["extension"]


def test_info_text_names_the_extension_state():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "extension" in result.output


def test_check_runs_the_compiled_op_against_its_reference():
    result = runner.invoke(app, ["check", "--size", "9"])
    assert result.exit_code == 0, result.output
    assert "max |error|" in result.output
