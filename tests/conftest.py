"""Shared test configuration: deterministic seeds and a few helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real published label files live in ../shared/data beside the checkout (CI clones the same way).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"



def pytest_collection_modifyitems(config, items):
    """Tests marked @pytest.mark.cuda skip cleanly where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the CLI in a subprocess: no TTY colours, a private cwd."""
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "120"
    return env
