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


def test_user_errors_are_one_line_not_a_traceback(tmp_path):
    """The console entry point turns a TransfusionError into 'error: ...' on stderr, exit 2."""
    import subprocess
    import sys

    code = "import sys; from transfusion.cli import main; sys.argv = sys.argv[1:]; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "transfusion", "run", "performance", "--data-dir",
         str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
