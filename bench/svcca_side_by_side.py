"""Issue 16: ops.svcca against the plain-torch method, the symmetric-update floor, anatome and
google/svcca, side by side in ONE process, rounds interleaved, min of N.

    python bench/svcca_side_by_side.py [--rounds 5] [--data issue12|bench] [--external DIR]

Data: a = b = 512 neurons, n = 100,000, float32. "issue12": x ~ N(0, 1), y = x W / 20 + noise
(where precision="auto" keeps the float32 pass; the issue's setting); "bench": bench_svcca.py's
ReLU'd shared latent + offsets (where the rounding model sends "auto" to float64).
Floor: half of one full float32 [x y]^T [x y] measured here (a symmetric rank-k update does half
the flops), and MKL's own ssyrk for reference. anatome (moskomule/anatome) and google/svcca are
loaded from --external (a folder holding anatome/distance.py, anatome/utils.py and cca_core.py;
fetched, never committed) and skipped when absent; they run 1 round each (tens of seconds).
Prints a markdown table (the one in bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_svcca import full_float32_gram, mkl_ssyrk, plain_torch_svcca  # noqa: E402

from transfusion.ops import reference_cca as R  # noqa: E402
from transfusion.ops import svcca  # noqa: E402

N, A, B, KEEP = 100_000, 512, 512, 0.99


def make_data(kind: str):
    g = torch.Generator().manual_seed(0)
    if kind == "issue12":
        x = torch.randn(N, A, generator=g)
        y = x[:, :B] @ torch.randn(B, B, generator=g) / 20 + torch.randn(N, B, generator=g)
        return x.contiguous(), y.contiguous()
    z = torch.randn(N, 64, generator=g)
    x = torch.relu(z @ torch.randn(64, A, generator=g) + torch.randn(N, A, generator=g)) + 0.1
    y = z @ torch.randn(64, B, generator=g) + 2 * torch.randn(N, B, generator=g) + 1.0
    return x.contiguous(), y.contiguous()


def _load(name: str, path: str, package: str | None = None):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    if package:
        mod.__package__ = package
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def external(folder: str | None):
    """(anatome svcca fn, google svcca fn), each None when its source is absent."""
    ana = goo = None
    if folder and os.path.exists(os.path.join(folder, "anatome", "distance.py")):
        import types

        pkg = types.ModuleType("anatome")
        pkg.__path__ = [os.path.join(folder, "anatome")]
        sys.modules["anatome"] = pkg
        _load("anatome.utils", os.path.join(folder, "anatome", "utils.py"), "anatome")
        src = open(os.path.join(folder, "anatome", "distance.py")).read()
        # distance.py imports torchvision's feature extraction (for its Distance hook class only)
        src = src.replace("from torchvision.models.feature_extraction import", "# ")
        mod = types.ModuleType("anatome.distance")
        mod.__package__ = "anatome"
        exec(compile(src, "anatome/distance.py", "exec"), mod.__dict__)

        def ana(x, y):
            return 1.0 - float(mod.svcca_distance(x, y, KEEP, "svd"))
    if folder and os.path.exists(os.path.join(folder, "cca_core.py")):
        cca_core = _load("cca_core", os.path.join(folder, "cca_core.py"))

        def goo(x, y):
            # google/svcca's SVCCA tutorial: centre, SVD of (neurons, n), keep 99% variance, CCA
            out = []
            for t in (x, y):
                acts = t.numpy().T.astype(np.float64)
                acts = acts - acts.mean(axis=1, keepdims=True)
                u, s, v = np.linalg.svd(acts, full_matrices=False)
                k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), KEEP)) + 1
                out.append(s[:k, None] * v[:k])
            r = cca_core.get_cca_similarity(out[0], out[1], epsilon=1e-10, verbose=False)
            return float(np.mean(r["cca_coef1"]))
    return ana, goo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default="issue12", choices=["issue12", "bench"])
    ap.add_argument("--external", default=os.environ.get("SVCCA_EXTERNAL"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = make_data(args.data)
    reference = float(R.svcca(x, y, keep=KEEP).mean())
    syrk = mkl_ssyrk()
    z = torch.cat([x, y], 1)
    cases = {
        "ops.svcca (precision=auto)": lambda: svcca(x, y, keep=KEEP),
        "plain-torch method (float32 Gram, float64 eigh + svdvals)": lambda: plain_torch_svcca(x, y),
        "plain-torch method in float64": lambda: plain_torch_svcca(x.double(), y.double()),
        "one full float32 [x y]^T [x y]": lambda: full_float32_gram(x, y),
    }
    if syrk is not None:
        cases["MKL ssyrk of [x y] (float32, upper triangle)"] = lambda: syrk(z)
    best = {k: float("inf") for k in cases}
    values = {}
    svcca(x[:20000], y[:20000])  # warm-up (allocator, MKL)
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            out = fn()
            best[name] = min(best[name], time.perf_counter() - t)
            values[name] = out
    ana, goo = external(args.external)
    for name, fn in (("anatome svcca_distance (svd backend, float32)", ana),
                     ("google/svcca cca_core (numpy float64, SVD keep 99%)", goo)):
        if fn is not None:
            t = time.perf_counter()
            values[name] = fn(x, y)
            best[name] = time.perf_counter() - t
    ours = best["ops.svcca (precision=auto)"]
    full = best["one full float32 [x y]^T [x y]"]
    floor = full / 2
    gflops = 2 * N * (A + B) ** 2 / full / 1e9
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor())
    r = values["ops.svcca (precision=auto)"]
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {model}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f}; data {args.data}; rounds {args.rounds} (min)")
    print(f"ours: {r!r}, error estimate {r.error_estimate}; reference (float64 QR/SVD) {reference:.10f}")
    print(f"full float32 Gram: {gflops:.0f} GFLOP/s; floor (half of it) {floor:.3f} s\n")
    print("| method | time (min) | ours faster by | / floor | abs error vs float64 |")
    print("|---|---|---|---|---|")
    for name, t in best.items():
        v = values[name]
        mean = float(v.mean) if hasattr(v, "mean") and not torch.is_tensor(v) else (
            float(v) if isinstance(v, float) else None)
        err = f"{abs(mean - reference):.1e}" if mean is not None else "-"
        print(f"| {name} | {t:.3f} s | {t / ours:.2f}x | {t / floor:.2f} | {err} |")


if __name__ == "__main__":
    main()
