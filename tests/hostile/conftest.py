"""The hostile-input suite: run the real console entry point in-process."""
from __future__ import annotations

import sys

import pytest


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args) -> (exit code, stdout, stderr)`` through ``transfusion.cli.main`` (what the
    ``transfusion`` command runs); an exception other than SystemExit fails the test."""
    from transfusion.cli import main

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["transfusion", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
