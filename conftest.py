"""pytest configuration shared by tests/ and bench/ (pytest-benchmark; quote ratios, not seconds)."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests and benchmarks marked @pytest.mark.cuda skip cleanly where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
