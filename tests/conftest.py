"""Shared test fixtures (the CUDA-marker hook lives in the repository's root conftest.py)."""
from __future__ import annotations

import pytest
import torch


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
