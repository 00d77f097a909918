"""The compiled extension loads and reports its build; without it, the package falls back."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import transfusion
from transfusion import _extension


def test_version_is_a_string():
    assert isinstance(transfusion.__version__, str) and transfusion.__version__.count(".") == 2


def test_extension_is_built_and_reports_itself():
    info = _extension.build_info()
    assert info["extension"], f"transfusion._C did not load: {info['reason']}"
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["cpu_capability"] in {"DEFAULT", "AVX2", "AVX512"}
    assert _extension.has_kernel("cpu")
    assert _extension.has_kernel("cuda") == info["cuda"]


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="no nvcc on this machine")
def test_cpu_kernels_are_compiled_for_torchs_openmp_threads():
    """ATen's parallel_for opens an OpenMP region only in code compiled with -fopenmp; before
    2026-12-08 the extension was not, and every CPU kernel ran on one thread whatever
    torch.set_num_threads said (CMakeLists.txt, "OpenMP")."""
    if not _extension.available():
        pytest.skip("extension not built")
    torch_uses_openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    assert _extension.build_info()["openmp"] is torch_uses_openmp


def test_gram_pass_gives_the_same_statistics_on_one_and_two_threads():
    """The parallel pass splits chunks between threads; the float64 sums may differ only by
    their own rounding."""
    from transfusion.ops import gram as G

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9000, 40, generator=g), torch.randn(9000, 24, generator=g) + 3
    shift = G.first_chunk_shift([x, y])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = G.gram_pass([x, y], shift)
        torch.set_num_threads(2)
        two = G.gram_pass([x, y], shift)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-9)


def test_cuda_sources_were_built_or_compile_checked():
    info = _extension.build_info()
    assert info["cuda"] or info["cuda_compile_checked"], info


def _run_without_extension(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRANSFUSION_DISABLE_EXTENSION="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_package_works_without_the_extension():
    code = (
        "import torch, transfusion\n"
        "from transfusion import ops, _extension\n"
        "from transfusion.ops import reference\n"
        "assert not _extension.available()\n"
        "x = torch.randn(2, 3, 5, 5); s = torch.rand(3) + 0.5; b = torch.randn(3)\n"
        "torch.testing.assert_close(ops.scale_shift_relu(x, s, b), reference.scale_shift_relu(x, s, b))\n"
        "print(transfusion.__version__)\n"
    )
    proc = _run_without_extension(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == transfusion.__version__


def test_info_says_when_the_extension_is_missing():
    proc = _run_without_extension("from transfusion.cli import app; app(['info', '--json'])")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["extension"]["extension"] is False
    assert "TRANSFUSION_DISABLE_EXTENSION" in info["extension"]["reason"]
