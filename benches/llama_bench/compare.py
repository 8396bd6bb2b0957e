"""kiln bench against llama.cpp's own llama-bench on the same file, alternating which runs
first in each round; prints medians and their ratio. Used by run.sh.

    python3 compare.py FILE THREADS ROUNDS [LLAMA_BENCH [KILN]]
"""
import json, os, subprocess, sys, statistics, time
F = sys.argv[1]; t = sys.argv[2]; rounds = int(sys.argv[3])
lb_bin = sys.argv[4] if len(sys.argv) > 4 else "target/llama-bench/build/bin/llama-bench"
kiln_bin = sys.argv[5] if len(sys.argv) > 5 else "target/release/kiln"
p, n, r = "512", "128", os.environ.get("REPS", "10")
LB = [lb_bin, "-m", F, "-p", p, "-n", n, "-r", r, "-t", t, "-fa", "0", "-o", "json"]
KI = [kiln_bin, "bench", F, "-p", p, "-n", n, "-r", r, "-t", t, "--fa", "0", "--json"]
def go(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {("pp" if x["n_prompt"] else "tg"): (x["avg_ts"], x["stddev_ts"]) for x in json.loads(out)}
res = {"lb": [], "kiln": []}
for i in range(rounds):
    order = [("lb", LB), ("kiln", KI)] if i % 2 == 0 else [("kiln", KI), ("lb", LB)]
    for name, cmd in order:
        v = go(cmd); res[name].append(v)
        print(i, name, {k: "%.1f ± %.1f" % v[k] for k in v}, flush=True)
for test in ["pp", "tg"]:
    lb = [x[test][0] for x in res["lb"]]; ki = [x[test][0] for x in res["kiln"]]
    ratios = [k / l for k, l in zip(ki, lb)]
    print(f"{test}{p if test=='pp' else n} t={t}: llama-bench median {statistics.median(lb):.1f} (min {min(lb):.1f}, max {max(lb):.1f}); "
          f"kiln median {statistics.median(ki):.1f} (min {min(ki):.1f}, max {max(ki):.1f}); "
          f"kiln/llama-bench: ratio of medians {statistics.median(ki)/statistics.median(lb):.3f}, median of per-round ratios {statistics.median(ratios):.3f}, ratio of bests {max(ki)/max(lb):.3f}")
    # The README table's row.
    print(f"| {os.path.basename(F)} | {t} | {test}{p if test=='pp' else n} | "
          f"{statistics.median(lb):.1f} ({min(lb):.1f}-{max(lb):.1f}) | "
          f"{statistics.median(ki):.1f} ({min(ki):.1f}-{max(ki):.1f}) | "
          f"{statistics.median(ki)/statistics.median(lb):.3f} |")
