#!/usr/bin/env python3
"""Prints the README's kernel table from criterion's results (target/criterion)."""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
BYTES = 64 * 4096 * 4  # input of benches/kernels.rs
ORDER = ["f32", "f16", "bf16", "q8_0", "q6_K", "q5_1", "q5_0", "q5_K", "q4_1", "q4_0", "q4_K", "q3_K", "q2_K"]

def mbps(group, who):
    path = os.path.join(root, group, who, "new", "estimates.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        ns = json.load(f)["median"]["point_estimate"]
    return BYTES / (ns / 1e9) / 1e6

for mode in ["ref", "imatrix"]:
    print(f"\n{'without' if mode == 'ref' else 'with'} importance weights (MB/s of f32 input, median)\n")
    print("| type | ggml 1 thread | kiln 1 thread | kiln/ggml | kiln all threads | scaling |")
    print("|---|---:|---:|---:|---:|---:|")
    for ty in ORDER:
        g = f"quantize-{mode}_{ty}"
        a, b, c = (mbps(g, w) for w in ["ggml-1-thread", "kiln-1-thread", "kiln-all-threads"])
        if a is None or b is None or c is None:
            continue
        print(f"| {ty} | {a:.0f} | {b:.0f} | {b / a:.2f}x | {c:.0f} | {c / b:.2f}x |")
