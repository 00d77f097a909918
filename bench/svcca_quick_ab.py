"""Quick A/B of ``ops.svcca`` against the plain-torch method and one full float32 Gram
(a = b = 512, n = 100,000, float32; 3 interleaved rounds, min; 2 then 1 torch threads).

    python bench/svcca_quick_ab.py

Run it once per build to compare (e.g. before and after a change to the Gram pass); the
fuller side-by-side table, with MKL ssyrk, anatome and google/svcca, is svcca_side_by_side.py.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_svcca import full_float32_gram, plain_torch_svcca  # noqa: E402

import transfusion  # noqa: E402
from transfusion.ops import svcca  # noqa: E402


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, 512, generator=g)
    y = x @ torch.randn(512, 512, generator=g) / 20 + torch.randn(100_000, 512, generator=g)
    cases = (("ours", lambda: svcca(x, y, keep=0.99)), ("plain", lambda: plain_torch_svcca(x, y)),
             ("gram", lambda: full_float32_gram(x, y)))
    for threads in (2, 1):
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {k: [] for k, _ in cases}
        for _ in range(3):
            for k, f in cases:
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        m = {k: min(v) for k, v in times.items()}
        print(f"{transfusion.__file__} threads={threads} ours {m['ours']:.2f} plain {m['plain']:.2f} "
              f"gram {m['gram']:.2f} plain/ours {m['plain'] / m['ours']:.2f} "
              f"ours/(gram/2) {m['ours'] / (m['gram'] / 2):.2f}", flush=True)


if __name__ == "__main__":
    main()
