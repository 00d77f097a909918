"""Training throughput (images/s) of one optimisation step (forward, backward, SGD update) at 224 px.

CBR-Small and ResNet50, batch 8 (the retina recipe's batch) of random 224x224 images, 5 outputs,
on the CPU (and CUDA when visible, with and without bf16 autocast + channels_last, the recipe's GPU
switches). Skips cleanly when transfusion.models is not importable.

    pytest bench/bench_train.py --benchmark-only --benchmark-columns=mean,min,rounds

images/s = batch / mean step time is stored in each benchmark's extra_info (``--benchmark-json``)
and printed at the end of the run.
"""
import contextlib

import pytest
import torch

models = pytest.importorskip("transfusion.models", reason="transfusion.models not importable")

BATCH, SIZE = 8, 224
RESULTS = {}


def _configs():
    out = [pytest.param("cpu", False, id="cpu-fp32")]
    out.append(pytest.param("cuda", False, id="cuda-fp32", marks=pytest.mark.cuda))
    out.append(pytest.param("cuda", True, id="cuda-bf16-channels_last", marks=pytest.mark.cuda))
    return out


@pytest.mark.parametrize("device,fast", _configs())
@pytest.mark.parametrize("name", ["cbr_small", "resnet50"])
def test_train_step_throughput(benchmark, name, device, fast):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=5).to(device).train()
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, 5, (BATCH,), device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    amp = (torch.autocast(device_type=device, dtype=torch.bfloat16) if fast
           else contextlib.nullcontext())

    def step():
        with amp:
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"train step {name} {SIZE}px batch {BATCH}"
    rounds = 3 if device == "cpu" else 20
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
    ips = BATCH / benchmark.stats.stats.mean
    benchmark.extra_info["images_per_s"] = ips
    RESULTS[(name, benchmark.name)] = ips
    print(f"\n{name} {device}{' bf16+channels_last' if fast else ''}: {ips:.2f} images/s")
