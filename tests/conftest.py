"""Shared test fixtures (the CUDA-marker hook lives in the repository's root conftest.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _machine_cache(tmp_path_factory):
    """The tests' machine cache ($TRANSFUSION_CACHE: synthetic data, on-the-fly pretraining runs)
    is a session temp folder, never the user's ~/.cache/transfusion. A test that needs its own
    sets the variable itself (monkeypatch)."""
    import os

    old = os.environ.get("TRANSFUSION_CACHE")
    os.environ["TRANSFUSION_CACHE"] = str(tmp_path_factory.mktemp("machine-cache"))
    yield
    if old is None:
        os.environ.pop("TRANSFUSION_CACHE", None)
    else:
        os.environ["TRANSFUSION_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: on a shared small CPU, OpenMP's spinning threads slow
    small training loops about 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
