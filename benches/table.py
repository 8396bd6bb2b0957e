#!/usr/bin/env python3
"""Prints the README's kernel table from criterion's results (target/criterion).

    python3 benches/table.py [CRITERION_DIR]
    python3 benches/table.py LOG      # the text `cargo bench --bench kernels` printed

One row per format that benches/kernels.rs measured, with and without importance weights:
ggml and kiln on one thread (MiB/s of f32 input, median), their ratio, the other SIMD levels'
ratios where measured, kiln on all threads and its scaling over one thread.
"""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
# input of benches/kernels.rs: 64 rows of 4096, or KILN_BENCH_ROWS rows (as the bench ran)
BYTES = int(os.environ.get("KILN_BENCH_ROWS", "64")) * 4096 * 4
# GgmlType::ALL's order (kernels/src/format.rs), as criterion names the groups.
ORDER = ["f32", "f16", "bf16", "q8_0", "q6_K", "q5_1", "q5_0", "q5_K", "q4_1", "q4_0", "q4_K",
         "q3_K", "q2_K", "q2_0", "q1_0", "iq4_nl", "iq4_xs", "iq3_s", "iq3_xxs", "iq2_s", "iq2_xs",
         "iq2_xxs", "iq1_m", "iq1_s", "tq2_0", "tq1_0", "mxfp4"]


UNIT_NS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def read_log(path):
    """Median times (ns) by "group/id" from criterion's printed results: a line naming the
    benchmark, then `time: [low median high]` (the run's own estimates, as in estimates.json)."""
    out, name = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("quantize-"):
                name = line.split()[0]
            elif name and line.strip().startswith("time:"):
                parts = line.split("[", 1)[1].split()
                out[name] = float(parts[2]) * UNIT_NS[parts[3]]
                name = None
    return out


LOG = read_log(root) if os.path.isfile(root) else None


def mibps(group, who):
    if LOG is not None:
        ns = LOG.get(f"{group.replace('_', '/', 1)}/{who}")
        if ns is None:
            return None
    else:
        path = os.path.join(root, group, who, "new", "estimates.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            ns = json.load(f)["median"]["point_estimate"]
    return BYTES / (ns / 1e9) / 2**20


def fmt(v):
    return f"{v / 1024:.2f} GiB/s" if v >= 1024 else f"{v:.1f}"


if LOG is not None:
    groups = {n.rsplit("/", 1)[0].replace("/", "_", 1) for n in LOG}
else:
    groups = set(os.listdir(root)) if os.path.isdir(root) else set()
for mode in ["ref", "imatrix"]:
    print(f"\n{'without' if mode == 'ref' else 'with'} importance weights (MiB/s of f32 input "
          "unless marked, median)\n")
    print("| type | ggml 1 thread | kiln 1 thread | kiln/ggml | other levels, kiln/ggml "
          "| kiln all threads | scaling |")
    print("|---|---:|---:|---:|---|---:|---:|")
    names = ORDER + sorted(g.split("_", 1)[1] for g in groups
                           if g.startswith(f"quantize-{mode}_") and g.split("_", 1)[1] not in ORDER)
    for ty in names:
        g = f"quantize-{mode}_{ty}"
        a, b, c = (mibps(g, w) for w in ["ggml-1-thread", "kiln-1-thread", "kiln-all-threads"])
        if b is None or c is None:
            continue
        # A run filtered to kiln's paths (a thread-scaling run) has no ggml figures.
        others = []
        for lvl in ["avx2", "scalar", "neon"]:
            v = mibps(g, f"kiln-1-thread-{lvl}")
            if v is not None and a is not None:
                others.append(f"{lvl} {v / a:.2f}x")
        ggml, ratio = (fmt(a), f"{b / a:.2f}x") if a is not None else ("-", "-")
        print(f"| {ty} | {ggml} | {fmt(b)} | {ratio} | {', '.join(others)} | {fmt(c)} "
              f"| {c / b:.2f}x |")
