"""Issue 13: one place answers "does op X have a kernel for this tensor?" and "what layout is it?"
(transfusion/ops/dispatch.py), and one C++ header holds the ops' shared input checks and the
channels_last test (csrc/include/transfusion/checks.h). Detection had been written three ways
and the channels_last test seven times; these checks keep it at one."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfusion import _extension
from transfusion.ops import dispatch

ROOT = Path(__file__).parent.parent.parent
PACKAGE = ROOT / "transfusion"
CSRC = ROOT / "csrc"
CHECKS_H = "csrc/include/transfusion/checks.h"
needs_ext = pytest.mark.skipif(not _extension.available(), reason="transfusion._C not built")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _op_calls_and_questions(tree: ast.AST):
    """(ops called as torch.ops.transfusion.<op>(...) outside _register, op names asked of
    dispatch.has_kernel). Calls inside _register are autograd formulas of an op already chosen."""
    called, asked = set(), set()

    def visit(node, in_register):
        for child in ast.iter_child_nodes(node):
            inside = in_register or (isinstance(child, ast.FunctionDef) and child.name == "_register")
            if isinstance(child, ast.Call):
                name = _dotted(child.func)
                if name.startswith("torch.ops.transfusion.") and not inside:
                    called.add(name.split(".")[3])
                if name == "dispatch.has_kernel" and child.args and isinstance(child.args[0], ast.Constant):
                    asked.add(child.args[0].value)
            visit(child, inside)

    visit(tree, False)
    return called, asked


def test_every_compiled_op_call_is_chosen_by_dispatch_has_kernel():
    unguarded = []
    for path in sorted(PACKAGE.rglob("*.py")):
        called, asked = _op_calls_and_questions(ast.parse(path.read_text()))
        unguarded += [f"{_rel(path)}: torch.ops.transfusion.{op}" for op in sorted(called - asked)]
    assert not unguarded, "ask dispatch.has_kernel(op, x) before calling:\n" + "\n".join(unguarded)


def test_kernel_detection_and_the_layout_test_live_in_dispatch_only():
    found = {"detection": set(), "layout": set()}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _dotted(node) in (
                    "_extension.kernel_device_types", "_extension.has_kernel"):
                found["detection"].add(_rel(path))
            if isinstance(node, ast.Call) and _dotted(node.func).endswith("is_contiguous") and any(
                    k.arg == "memory_format" and _dotted(k.value) == "torch.channels_last"
                    for k in node.keywords):
                found["layout"].add(_rel(path))
    assert found == {"detection": {"transfusion/ops/dispatch.py"},
                     "layout": {"transfusion/ops/dispatch.py"}}


def test_cpp_channels_last_test_and_shared_checks_live_in_checks_h():
    sources = sorted(p for p in CSRC.rglob("*") if p.suffix in (".cpp", ".cu", ".h"))
    layout = [_rel(p) for p in sources if re.search(r"is_contiguous\(\s*(at::)?MemoryFormat::ChannelsLast",
                                                     p.read_text())]
    assert layout == [CHECKS_H]
    nc_check = [_rel(p) for p in sources if "must be (N, C, ...)" in p.read_text()]
    assert nc_check == [CHECKS_H]
    # every source registering BatchNorm-family kernels uses the shared header
    for p in sources:
        text = p.read_text()
        if re.search(r"^TORCH_LIBRARY_IMPL\(", text, re.M) and "gram_pass" not in p.name:
            assert '#include "transfusion/checks.h"' in text, _rel(p)


def test_every_registered_op_has_a_dispatch_entry():
    schemas = set(re.findall(r'm\.def\("(\w+)\(', (CSRC / "registration.cpp").read_text()))
    assert schemas == set(dispatch.KERNELS)


def test_has_kernel_answers_per_op_device_and_dtype():
    with pytest.raises(ValueError, match="unknown transfusion op"):
        dispatch.has_kernel("no_such_op", torch.zeros(1))
    x = torch.zeros(2, 3, 4, 4)
    for op in dispatch.KERNELS:
        assert not dispatch.has_kernel(op, torch.device("meta"))
        assert dispatch.has_kernel(op, x) == _extension.available()
        assert dispatch.has_kernel(op, "cuda") == (_extension.available() and _extension.has_kernel("cuda"))
    for op in ("scale_shift_relu", "bn_relu_stats_forward", "bn_relu_backward"):
        assert not dispatch.has_kernel(op, x.bfloat16())  # CPU kernels: float32 / float64 only
        assert not dispatch.has_kernel(op, "cpu", torch.float16)
        assert dispatch.has_kernel(op, x.double()) == _extension.available()
    assert dispatch.has_kernel("gram_pass", "cpu", torch.bfloat16) == _extension.available()


def test_memory_format_is_channels_last_only_for_a_true_nhwc_tensor():
    x = torch.randn(2, 3, 4, 5)
    assert dispatch.memory_format(x) == torch.contiguous_format
    cl = x.contiguous(memory_format=torch.channels_last)
    assert dispatch.is_channels_last(cl) and dispatch.memory_format(cl) == torch.channels_last
    # one channel: channels_last and contiguous at once -> contiguous
    one = torch.randn(2, 1, 4, 5).contiguous(memory_format=torch.channels_last)
    assert not dispatch.is_channels_last(one)
    assert not dispatch.is_channels_last(x.transpose(2, 3))
    assert not dispatch.is_channels_last(torch.randn(2, 3, 4).transpose(1, 2))


def test_without_the_extension_nothing_has_a_kernel():
    code = ("import torch\nfrom transfusion.ops import dispatch\n"
            "print(sum(dispatch.has_kernel(op, torch.zeros(2, 2)) for op in dispatch.KERNELS))\n")
    env = dict(os.environ, TRANSFUSION_DISABLE_EXTENSION="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


@needs_ext
def test_bn_relu_train_and_scale_shift_relu_choose_the_kernel_through_dispatch(monkeypatch):
    from transfusion import ops

    x, s, b = torch.randn(2, 3, 4, 4), torch.rand(3) + 0.5, torch.randn(3)
    asked = []
    real = dispatch.has_kernel

    def spy(op, t, dtype=None):
        asked.append(op)
        return real(op, t, dtype)

    monkeypatch.setattr(dispatch, "has_kernel", spy)
    ops.scale_shift_relu(x, s, b)
    ops.bn_relu_train(x, s, b)
    ops.svcca(torch.randn(64, 4), torch.randn(64, 3))
    assert {"scale_shift_relu", "bn_relu_stats_forward", "gram_pass"} <= set(asked)
