"""The CPU ops' output allocator: large outputs reuse freed blocks, bounded by its limit."""
import os
import subprocess
import sys

import pytest
import torch

from transfusion import _extension

needs_ext = pytest.mark.skipif(not _extension.available(), reason="transfusion._C not built")
MiB = 1 << 20


def _run(code: str, cache_mib: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TRANSFUSION_CPU_OUTPUT_CACHE_MIB", None)
    if cache_mib is not None:
        env["TRANSFUSION_CPU_OUTPUT_CACHE_MIB"] = cache_mib
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


REUSE = """
import torch, transfusion.ops
from transfusion import _extension as e
x = torch.randn(4, 8, 128, 128)  # 2 MiB per tensor: the allocator's smallest size
s, b = torch.ones(8), torch.zeros(8)
y = torch.ops.transfusion.scale_shift_relu(x, s, b)
ptr = y.data_ptr()
del y
print(e.cpu_output_cache_info()["cached_bytes"], e.cpu_output_cache_info()["limit_bytes"])
y = torch.ops.transfusion.scale_shift_relu(x, s, b)
print(int(y.data_ptr() == ptr), e.cpu_output_cache_info()["cached_bytes"])
torch.testing.assert_close(y, torch.relu(x))
y.resize_(4, 8, 256, 256).fill_(1.0)  # a resize beyond the block moves to a new block
e.empty_cpu_output_cache()
print(e.cpu_output_cache_info()["cached_bytes"])
"""


@needs_ext
def test_freed_output_is_reused_and_cache_empties():
    out = _run(REUSE, None)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].split() == [str(2 * MiB), str(256 * MiB)]  # default limit 256 MiB
    assert lines[1].split() == ["1", "0"]  # same block handed out again
    assert lines[2] == "0"


@needs_ext
def test_cache_off_and_bad_setting():
    out = _run(REUSE, "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0].split() == ["0", "0"]
    bad = _run(REUSE, "lots")
    assert bad.returncode != 0
    assert "TRANSFUSION_CPU_OUTPUT_CACHE_MIB must be a whole number" in bad.stderr


@needs_ext
def test_limit_drops_oldest_blocks():
    code = """
import torch, transfusion.ops
from transfusion import _extension as e
s, b = torch.ones(8), torch.zeros(8)
outs = [torch.ops.transfusion.scale_shift_relu(torch.randn(4, 8, 128, 128 * k), s, b)
        for k in (1, 2, 3)]  # 2, 4 and 6 MiB
del outs
print(e.cpu_output_cache_info()["cached_bytes"])
"""
    out = _run(code, "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(6 * MiB)  # 2 + 4 + 6 > 8: the oldest ones were dropped


@needs_ext
def test_small_outputs_use_torch_allocator():
    before = _extension.cpu_output_cache_info()["cached_bytes"]
    y = torch.ops.transfusion.scale_shift_relu(torch.randn(2, 3, 8, 8), torch.ones(3), torch.zeros(3))
    del y
    assert _extension.cpu_output_cache_info()["cached_bytes"] == before
