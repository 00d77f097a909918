"""Fused vs eager CBR-Small on CPU, timed alternately (fused, eager, fused, ...) and reported as
the best of N: steadier than pytest-benchmark's back-to-back rounds when other processes share
the cores and the load drifts between the two halves of a group.

    python bench/cbr_interleaved.py --rounds 5
    python bench/cbr_interleaved.py --rounds 3 --threads 1 --cpu-time

``--threads 1 --cpu-time`` times process CPU time on one thread: a proxy for the work done that
preemption by other processes barely moves (cache sharing still does).
"""
import argparse
import importlib.util
import time
from pathlib import Path

import torch
from torch import nn


def _bench_module():
    path = Path(__file__).with_name("bench_cbr.py")
    spec = importlib.util.spec_from_file_location("bench_cbr", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_of(fns: dict, rounds: int, clock=time.perf_counter) -> dict:
    best = {k: float("inf") for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = clock()
            f()
            best[k] = min(best[k], clock() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    how = f"best of {args.rounds}, interleaved, {torch.get_num_threads()} threads, " + (
        "CPU time" if args.cpu_time else "wall time")
    b = _bench_module()
    x = torch.randn(b.BATCH, 3, b.SIZE, b.SIZE, generator=torch.Generator().manual_seed(1))
    t = torch.arange(b.BATCH) % 5
    models = {"fused": b.cbr_small(True), "eager": b.cbr_small(False)}
    models["eager"].load_state_dict(models["fused"].state_dict())
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    train = best_of({k: (lambda k=k: b._train_step(models[k], opts[k], x, t)) for k in models},
                    args.rounds, clock)
    for m in models.values():
        m.eval()

    def infer(m: nn.Module):
        with torch.no_grad():
            m(x)
    inference = best_of({k: (lambda k=k: infer(models[k])) for k in models}, args.rounds, clock)
    for name, r in (("cbr-small-train-step", train), ("cbr-small-inference", inference)):
        print(f"{name}: fused {r['fused']:.3f} s, eager {r['eager']:.3f} s, "
              f"eager/fused {r['eager'] / r['fused']:.2f}x ({how})")


if __name__ == "__main__":
    main()
