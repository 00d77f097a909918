"""Fused conv-BN-ReLU (transfusion.ops.CBR2d / bn_relu_train) against eager PyTorch.

    pytest bench/bench_cbr.py --benchmark-only --benchmark-group-by=group

Groups (ours and eager side by side):
  * cbr-bn-relu-part[-cl]: forward + backward of BN + ReLU alone on the conv outputs of CBR-Small
    at batch 8, 224 px (8x32x224x224, 8x64x111x111, 8x128x55x55, 8x256x27x27), contiguous and
    channels_last. Also the float64 reference on the smallest shape (cbr-bn-relu-reference).
  * cbr-small-train-step: one SGD step of CBR-Small (7x7 convs 3->32 mp 64 mp 128 mp 256 mp,
    maxpool 3x3/2, global average pool, linear), batch 8, 224 px. The fused model pools with
    MaxPool2dSavingIndices, as transfusion.models' CBR models do.
  * cbr-saved-activations: the training forward of CBR-Small and CBR-LargeW (batch 8, 224 px),
    with the bytes autograd saves for backward (distinct storages, parameters excluded) in
    extra_info and the fused/eager ratio asserted <= 0.7 (the issue's memory target).
  * cbr-small-inference: the same model in eval mode under no_grad (ours: BN folded into the conv).
  * cbr-block1-inference: its first block alone (3->32, 7x7 on 8x3x224x224), eval, no_grad.
  * cuda-*: the same on a GPU, plus the CBR-LargeW training step (batch 32, 224 px, fp32 and
    bf16 autocast) for fused, eager and torch.compile(eager), and its peak memory
    (torch.cuda.max_memory_allocated above the model's own) in extra_info; skipped without CUDA
    (none on the CPU-only development machine).
"""
import copy

import pytest
import torch
from torch import nn

from transfusion.memory import saved_activation_bytes
from transfusion.models.cbr import CBR_SPECS, CBRNet
from transfusion.ops import CBR2d, MaxPool2dSavingIndices, bn_relu_train, reference

BATCH, SIZE = 8, 224
CONV_OUT_SHAPES = [(BATCH, 32, 224, 224), (BATCH, 64, 111, 111), (BATCH, 128, 55, 55),
                   (BATCH, 256, 27, 27)]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA (GPU cases are not measurable on this machine)")


def cbr_small(fused: bool, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    layers, cin = [], 3
    for cout in (32, 64, 128, 256):
        pool = MaxPool2dSavingIndices(3, 2) if fused else nn.MaxPool2d(3, 2)
        layers += [CBR2d(cin, cout, 7, fused=fused), pool]
        cin = cout
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers, *head)


def _bn_relu_inputs(device, channels_last, shapes=CONV_OUT_SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    out = []
    for shape in shapes:
        x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        c = shape[1]
        w = torch.ones(c, device=device, requires_grad=True)
        b = torch.zeros(c, device=device, requires_grad=True)
        out.append((x.requires_grad_(), w, b, torch.randn_like(x)))
    return out


def _fused_part(inputs):
    for x, w, b, g in inputs:
        y = bn_relu_train(x, w, b, 1e-5)[0]
        torch.autograd.backward(y, g)


def _eager_part(inputs, bns):
    for (x, _, _, g), bn in zip(inputs, bns):
        y = torch.relu(bn(x))
        torch.autograd.backward(y, g)


def _bns(inputs, device):
    return [nn.BatchNorm2d(x.shape[1]).to(device) for x, *_ in inputs]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn, device, rounds):
    def step():
        fn()
        _sync(device)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)


# ---- BN + ReLU part ----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_bn_relu_part_cpu(benchmark, impl, channels_last):
    benchmark.group = "cbr-bn-relu-part" + ("-cl" if channels_last else "")
    inputs = _bn_relu_inputs("cpu", channels_last)
    if impl == "fused":
        _run(benchmark, lambda: _fused_part(inputs), "cpu", rounds=5)
    else:
        bns = _bns(inputs, "cpu")
        _run(benchmark, lambda: _eager_part(inputs, bns), "cpu", rounds=5)


@pytest.mark.parametrize("impl", ["fused", "eager", "reference-f64"])
def test_bn_relu_reference_cpu(benchmark, impl):
    benchmark.group = "cbr-bn-relu-reference"
    inputs = _bn_relu_inputs("cpu", False, shapes=CONV_OUT_SHAPES[-1:])
    x, w, b, g = inputs[0]
    if impl == "fused":
        _run(benchmark, lambda: _fused_part(inputs), "cpu", rounds=5)
    elif impl == "eager":
        bns = _bns(inputs, "cpu")
        _run(benchmark, lambda: _eager_part(inputs, bns), "cpu", rounds=5)
    else:
        _run(benchmark, lambda: torch.autograd.backward(
            reference.bn_relu_train(x, w, b, 1e-5)[0], g), "cpu", rounds=5)


# ---- whole CBR-Small -------------------------------------------------------------------------
def _train_step(model, opt, x, t):
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), t).backward()
    opt.step()


def _model_and_batch(device, fused, channels_last=False):
    model = cbr_small(fused).to(device)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.arange(BATCH, device=device) % 5
    return model, x, t


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_cbr_small_train_step_cpu(benchmark, impl):
    benchmark.group = "cbr-small-train-step"
    model, x, t = _model_and_batch("cpu", impl == "fused")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _run(benchmark, lambda: _train_step(model, opt, x, t), "cpu", rounds=3)


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_cbr_small_inference_cpu(benchmark, impl):
    benchmark.group = "cbr-small-inference"
    model, x, _ = _model_and_batch("cpu", impl == "fused")
    model.eval()

    def forward():
        with torch.no_grad():
            model(x)
    _run(benchmark, forward, "cpu", rounds=5)


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_cbr_block1_inference_cpu(benchmark, impl):
    """The first block alone (largest activation: 8x32x224x224), where the saved passes show."""
    benchmark.group = "cbr-block1-inference"
    torch.manual_seed(0)
    block = CBR2d(3, 32, 7, fused=impl == "fused").eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    def forward():
        with torch.no_grad():
            block(x)
    _run(benchmark, forward, "cpu", rounds=7)


# ---- saved activations (memory, not time) ------------------------------------------------------
@pytest.mark.parametrize("name", ["cbr_small", "cbr_largew"])
def test_cbr_saved_activations_cpu(benchmark, name):
    benchmark.group = "cbr-saved-activations"
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    fused = CBRNet(CBR_SPECS[name], num_classes=5, fused=True)
    eager = CBRNet(CBR_SPECS[name], num_classes=5, fused=False)
    fused_bytes, eager_bytes = saved_activation_bytes(fused, x), saved_activation_bytes(eager, x)
    benchmark.extra_info.update(fused_mib=fused_bytes / 2**20, eager_mib=eager_bytes / 2**20,
                                ratio=fused_bytes / eager_bytes)
    _run(benchmark, lambda: fused(x), "cpu", rounds=1)
    assert fused_bytes / eager_bytes <= 0.7


# ---- GPU (skipped here: no CUDA on the development machine) -----------------------------------
@needs_cuda
@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bn_relu_part_cuda(benchmark, impl, channels_last, dtype):
    benchmark.group = f"cuda-bn-relu-part-{'cl' if channels_last else 'nchw'}-{dtype}"
    inputs = _bn_relu_inputs("cuda", channels_last, dtype=dtype)
    if impl == "fused":
        _run(benchmark, lambda: _fused_part(inputs), "cuda", rounds=20)
    else:
        bns = [bn.to(dtype) for bn in _bns(inputs, "cuda")]
        _run(benchmark, lambda: _eager_part(inputs, bns), "cuda", rounds=20)


@needs_cuda
@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_cbr_small_train_step_cuda_bf16(benchmark, impl, channels_last):
    benchmark.group = f"cuda-cbr-small-train-step-bf16-{'cl' if channels_last else 'nchw'}"
    model, x, t = _model_and_batch("cuda", impl == "fused", channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
    _run(benchmark, step, "cuda", rounds=20)


@needs_cuda
@pytest.mark.parametrize("impl", ["fused", "eager", "compiled-eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cbr_largew_train_step_cuda(benchmark, impl, dtype):
    """CBR-LargeW, batch 32, 224 px: one SGD step (autocast for bf16). extra_info: peak memory of
    the step above the model, parameters, gradients and optimiser state."""
    benchmark.group = f"cuda-cbr-largew-train-step-{'bf16' if dtype == torch.bfloat16 else 'fp32'}"
    torch.manual_seed(0)
    model = CBRNet(CBR_SPECS["cbr_largew"], num_classes=5, fused=impl == "fused").cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(32, 3, SIZE, SIZE, device="cuda")
    t = torch.arange(32, device="cuda") % 5
    forward = torch.compile(model) if impl == "compiled-eager" else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = nn.functional.cross_entropy(forward(x), t)
        loss.backward()
        opt.step()

    for _ in range(3):  # compile, cuDNN autotuning, optimiser state
        step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    benchmark.extra_info["step_peak_above_model_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    _run(benchmark, step, "cuda", rounds=20)


def test_models_are_interchangeable():
    """Not a timing: the fused and eager CBR-Small share a state_dict layout."""
    fused, eager = cbr_small(True), cbr_small(False)
    eager.load_state_dict(copy.deepcopy(fused.state_dict()))
