"""Benchmarks: pytest-benchmark, ours beside the references in one run (`pytest bench --benchmark-only`).

Compare within a group: the machines are shared and noisy, so quote ratios, not seconds.
"""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Benchmarks marked @pytest.mark.cuda skip cleanly where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
