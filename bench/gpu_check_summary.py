"""One-line results for bench/gpu_check.sh, and its results table (plain Python, no torch needed
except for ``build``).

    python bench/gpu_check_summary.py build                   # what transfusion._C was built with
    python bench/gpu_check_summary.py pytest LOG              # "N passed, M skipped" of a pytest log
    python bench/gpu_check_summary.py svcca BENCH.json        # Gram pass vs cuBLAS, svcca vs torch
    python bench/gpu_check_summary.py cbr BENCH.json          # CBR eager / compiled vs fused
    python bench/gpu_check_summary.py train METRICS.jsonl     # training images/s
    python bench/gpu_check_summary.py table STEPS.tsv         # the markdown table of every step

Each prints one line (the table: a markdown table); a missing or unreadable input prints what is
missing instead of a traceback, since the script calls these after steps that may have failed.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def build() -> str:
    from transfusion import _extension

    b = _extension.build_info()
    if not b.get("extension"):
        return f"extension NOT loaded: {b.get('reason')}"
    cuda = f"CUDA kernels for sm {b['cuda_archs']}" if b.get("cuda") else f"NO CUDA kernels ({b.get('reason')})"
    return f"transfusion._C loaded, {cuda}, CPU {b.get('cpu_capability')}, torch {b.get('torch_version')}"


def pytest_line(log: str) -> str:
    text = Path(log).read_text(errors="replace")
    found = re.findall(r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|deselected|xfailed|xpassed)"
                       r"(?:, )?)+)(?: in [\d.]+s)?", text, flags=re.M)
    return found[-1].strip().rstrip(",") if found else "no pytest summary line in the log"


def _benchmarks(path: str) -> list[dict]:
    return json.loads(Path(path).read_text())["benchmarks"]


def svcca(path: str) -> str:
    parts = []
    by_name = {b["name"]: b for b in _benchmarks(path)}
    gram = by_name.get("test_cuda_gram_pass_ours")
    if gram:
        i = gram.get("extra_info", {})
        parts.append(f"Gram pass {i.get('fraction_of_cublas_rate', float('nan')):.2f}x cuBLAS fp32 "
                     f"rate ({i.get('gram_gflops_3_blocks', float('nan')):.0f} vs "
                     f"{i.get('cublas_mm_gflops', float('nan')):.0f} GFLOP/s, "
                     f"{'compiled op' if i.get('compiled_op') else 'torch-ops fallback'})")
    ours = by_name.get("test_cuda_svcca_ours")
    if ours:
        i = ours.get("extra_info", {})
        sp = [f"{i[k]:.1f}x {k[len('speedup_vs_'):]}" for k in sorted(i) if k.startswith("speedup_vs_")]
        parts.append(f"svcca {ours['stats']['min'] * 1e3:.0f} ms ({', '.join(sp) or 'no baseline'}; "
                     f"|err| {i.get('abs_err_vs_float64_reference', float('nan')):.1e})")
    return "; ".join(parts) or "no CUDA Gram/svcca benchmark in the file"


def cbr(path: str) -> str:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in _benchmarks(path):
        impl = (b.get("params") or {}).get("impl")
        if impl:
            groups[b["group"]][impl] = b["stats"]["median"]
    parts = []
    for group, t in sorted(groups.items()):
        if "fused" not in t:
            continue
        others = ", ".join(f"{o} {t[o] / t['fused']:.2f}x" for o in sorted(set(t) - {"fused"}))
        short = group.replace("cuda-", "").replace("-train-step", "")
        parts.append(f"{short}: fused {t['fused'] * 1e3:.1f} ms, {others}")
    return ("time / fused (median): " + "; ".join(parts)) if parts else "no fused/eager pairs in the file"


def train(path: str) -> str:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    ips = [r["images_per_s"] for r in rows if r.get("kind") == "train" and "images_per_s" in r]
    if not ips:
        return "no train rows in metrics.jsonl"
    steady = ips[1:] or ips  # the first row holds cuDNN autotuning and warm-up
    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    return (f"{statistics.median(steady):.0f} images/s (median of {len(steady)} logged windows "
            f"after the first; data-loading waits excluded), loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def table(path: str) -> str:
    lines = ["| step | status | seconds | result |", "|---|---|---|---|"]
    for line in Path(path).read_text().splitlines():
        if line.strip():
            name, status, seconds, result = (line.split("\t") + ["", "", ""])[:4]
            lines.append(f"| {name} | {status} | {seconds} | {result.replace('|', '/')} |")
    return "\n".join(lines)


COMMANDS = {"build": (build, 0), "pytest": (pytest_line, 1), "svcca": (svcca, 1), "cbr": (cbr, 1),
            "train": (train, 1), "table": (table, 1)}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS or len(argv) - 1 != COMMANDS[argv[0]][1]:
        print(f"usage: gpu_check_summary.py {{{'|'.join(COMMANDS)}}} [FILE]", file=sys.stderr)
        return 2
    fn, _ = COMMANDS[argv[0]]
    try:
        print(fn(*argv[1:]))
    except Exception as e:  # noqa: BLE001 - one line for the results table, never a traceback
        print(f"no result ({type(e).__name__}: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
