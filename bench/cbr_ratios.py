"""Eager/fused time ratios from a pytest-benchmark JSON of bench_cbr.py (median times).

    python bench/cbr_ratios.py results.json
"""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in json.load(open(path))["benchmarks"]:
        impl = b["params"].get("impl", b["name"]) if b.get("params") else b["name"]
        groups[b["group"]][impl] = b["stats"]["median"]
    print("| group | fused median (s) | eager median (s) | eager / fused |")
    print("|---|---|---|---|")
    for group, t in sorted(groups.items()):
        if "fused" in t and "eager" in t:
            print(f"| {group} | {t['fused']:.4f} | {t['eager']:.4f} | {t['eager'] / t['fused']:.2f}x |")
        for other in sorted(set(t) - {"fused", "eager"}):
            print(f"| {group} ({other}) | | {t[other]:.4f} | {t[other] / t['fused']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])
