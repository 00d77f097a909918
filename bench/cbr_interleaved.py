"""Fused vs eager CBR-Small on CPU, timed alternately (fused, eager, fused, ...) and reported as
the best of N: steadier than pytest-benchmark's back-to-back rounds when other processes share
the cores and the load drifts between the two halves of a group.

    python bench/cbr_interleaved.py --rounds 5
"""
import argparse
import importlib.util
import time
from pathlib import Path

import torch
from torch import nn


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_cbr", Path(__file__).with_name("bench_cbr.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_of(fns: dict, rounds: int) -> dict:
    best = {k: float("inf") for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    b = _bench_module()
    x = torch.randn(b.BATCH, 3, b.SIZE, b.SIZE, generator=torch.Generator().manual_seed(1))
    t = torch.arange(b.BATCH) % 5
    models = {"fused": b.cbr_small(True), "eager": b.cbr_small(False)}
    models["eager"].load_state_dict(models["fused"].state_dict())
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    train = best_of({k: (lambda k=k: b._train_step(models[k], opts[k], x, t)) for k in models},
                    args.rounds)
    for m in models.values():
        m.eval()

    def infer(m: nn.Module):
        with torch.no_grad():
            m(x)
    inference = best_of({k: (lambda k=k: infer(models[k])) for k in models}, args.rounds)
    for name, r in (("cbr-small-train-step", train), ("cbr-small-inference", inference)):
        print(f"{name}: fused {r['fused']:.3f} s, eager {r['eager']:.3f} s, "
              f"eager/fused {r['eager'] / r['fused']:.2f}x (best of {args.rounds}, interleaved)")


if __name__ == "__main__":
    main()
