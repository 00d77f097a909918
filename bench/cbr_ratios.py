"""Eager/fused time ratios from a pytest-benchmark JSON of bench_cbr.py (min and median times;
on a shared, loaded machine the min is the steadier estimate).

    python bench/cbr_ratios.py results.json
"""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    groups: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for b in json.load(open(path))["benchmarks"]:
        impl = b["params"].get("impl", b["name"]) if b.get("params") else b["name"]
        groups[b["group"]][impl] = (b["stats"]["min"], b["stats"]["median"])
    print("| group | fused min / median (s) | other min / median (s) "
          "| other / fused (min, median) |")
    print("|---|---|---|---|")
    for group, t in sorted(groups.items()):
        if "fused" not in t:
            continue
        fmin, fmed = t["fused"]
        for other in sorted(set(t) - {"fused"}):
            omin, omed = t[other]
            print(f"| {group}: {other} | {fmin:.4f} / {fmed:.4f} | {omin:.4f} / {omed:.4f} | "
                  f"{omin / fmin:.2f}x, {omed / fmed:.2f}x |")
    for b in json.load(open(path))["benchmarks"]:
        info = b.get("extra_info") or {}
        if info:
            print(f"{b['name']}: " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()))


if __name__ == "__main__":
    main(sys.argv[1])
