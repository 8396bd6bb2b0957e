#!/usr/bin/env bash
# The budget mix (issue 14, section 3) on the real Gemma 3 270M, against llama.cpp's fixed mixes
# and the best hand mix llama-quantize's own options build, at the same byte budgets.
#
#   bash benches/budget/run.sh [WORKDIR]     (default: $CARGO_TARGET_DIR/budget-bench)
#
# - reference: the f32 Gemma 3 270M of benches/gemma3 (made as benches/gemma3/run.sh makes it
#   when missing). It is itself requantized from the published Q4_K_M GGUF: every weight is
#   exactly what that Q4_K_M file holds, dequantized.
# - importance matrix: `kiln imatrix` on a calibration text, llama.cpp's tools/completion/README.md
#   from the pinned llama-cpp-sys-2 crate (57 KB, present wherever kiln builds); the same imatrix
#   for every file below. Delete WORKDIR/imatrix.gguf to recompute it.
# - evaluation: `kiln eval` (llama-perplexity --kl-divergence) on a different text, the bundled
#   fixtures/eval/text.txt, -c 512, against the f32 reference.
# - budgets: the exact byte sizes of llama.cpp's Q3_K_M and Q2_K files (made by `kiln quantize
#   -t T --imatrix`, byte-identical to llama-quantize's with the same options).
# - hand mixes: --token-embedding-type E with E in q8_0, q5_1, q5_0, q4_0, each on the largest
#   base mix (Q8_0, Q6_K, Q5_K_M, Q5_1, Q5_0, Q4_K_M, Q4_1, Q4_0, Q3_K_M, Q2_K) whose file fits
#   the budget; all of them are evaluated and the best within the budget is reported.
# - kiln: `kiln quantize --target-size BYTES --imatrix` (the same imatrix).
# Writes benches/budget/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
tdir=${CARGO_TARGET_DIR:-target}
work=${1:-$tdir/budget-bench}
threads=${THREADS:-$(nproc)}
mkdir -p "$work"
. benches/gemma3/reference.sh
cal=$(ls ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/tools/completion/README.md | head -1)
text=fixtures/eval/text.txt
t0=$(date +%s)
if [ ! -f "$work/imatrix.gguf" ]; then
  $kiln imatrix "$ref" --text "$cal" --threads "$threads" -o "$work/imatrix.gguf" 2>"$work/imatrix.log"
fi
im=$work/imatrix.gguf
size_of() { stat -c %s "$1"; }
dry_size() { $kiln quantize "$@" --imatrix "$im" "$ref" --dry-run 2>/dev/null | sed -n 's/.*file size \([0-9]*\) bytes.*/\1/p'; }
: >"$work/rows.tsv"
files=()
for t in Q4_K_M Q3_K_M Q2_K; do
  $kiln quantize -t "$t" --imatrix "$im" "$ref" -o "$work/llama-$t.gguf" --force --no-checksum >/dev/null 2>&1
  files+=("$work/llama-$t.gguf")
done
bases="Q8_0 Q6_K Q5_K_M Q5_1 Q5_0 Q4_K_M Q4_1 Q4_0 Q3_K_M Q2_K"
for b in Q3_K_M Q2_K; do
  budget=$(size_of "$work/llama-$b.gguf")
  echo -e "$b\tfixed\tllama.cpp $b\t$work/llama-$b.gguf\t$budget" >>"$work/rows.tsv"
  for e in q8_0 q5_1 q5_0 q4_0; do
    for base in $bases; do
      s=$(dry_size -t "$base" --token-embedding-type "$e")
      if [ -n "$s" ] && [ "$s" -le "$budget" ]; then
        f="$work/hand-$base-emb-$e.gguf"
        [ -f "$f" ] || $kiln quantize -t "$base" --token-embedding-type "$e" --imatrix "$im" "$ref" -o "$f" --force --no-checksum >/dev/null 2>&1
        echo -e "$b\thand\t$base + --token-embedding-type $e\t$f\t$budget" >>"$work/rows.tsv"
        files+=("$f")
        break
      fi
    done
  done
  f="$work/kiln-budget-$b.gguf"
  $kiln quantize --target-size "$budget" --imatrix "$im" "$ref" -o "$f" --force --dry-run >"$work/kiln-plan-$b.txt" 2>/dev/null
  $kiln quantize --target-size "$budget" --imatrix "$im" "$ref" -o "$f" --force | tee "$work/kiln-$b.log"
  echo -e "$b\tkiln\tkiln --target-size $budget\t$f\t$budget" >>"$work/rows.tsv"
  files+=("$f")
done
# unique files, evaluated once each
mapfile -t uniq < <(printf '%s\n' "${files[@]}" | awk '!seen[$0]++')
$kiln eval "${uniq[@]}" --reference "$ref" --text "$text" -c 512 --threads "$threads" --no-questions --json >"$work/eval.json" 2>"$work/eval.log"
t1=$(date +%s)
KILN=$kiln python3 - "$work" "$ref" "$cal" "$text" "$((t1 - t0))" >benches/budget/results.md <<'PY'
import json, os, sys, subprocess
work, ref, cal, text, secs = sys.argv[1:6]
ev = json.load(open(os.path.join(work, "eval.json")))
if isinstance(ev, dict):
    ev = ev.get("results", ev.get("files", []))
by = {os.path.realpath(r["model_filename"]): r for r in ev}
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(work, "rows.tsv"))]
print("# Budget mixes on Gemma 3 270M: kiln against llama.cpp's fixed mix and the best hand mix")
print()
print(f"reference: {os.path.basename(ref)} (f32, requantized from the published Q4_K_M); "
      f"importance matrix: `kiln imatrix` on {os.path.relpath(cal, os.path.expanduser('~/.cargo/registry/src'))}; "
      f"evaluation text: {text} (-c 512, not the calibration text); same imatrix for every file. "
      f"Whole run {secs} s.")
print()
def bpw(f):
    # data bits over weights, from the file's own header (kiln inspect)
    j = json.loads(subprocess.run([os.environ["KILN"], "inspect", "--json", f], capture_output=True, text=True).stdout)
    return j["tensor_bytes"] * 8 / j["n_params"]
summary = []
for b in ["Q3_K_M", "Q2_K"]:
    rs = [r for r in rows if r[0] == b]
    budget = int(rs[0][4])
    print(f"## Budget: llama.cpp's {b} file, {budget} bytes ({budget/1048576:.2f} MiB)")
    print()
    print("| file | kind | bytes | fits | bpw | mean KLD | same top % | PPL |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    best = {}
    for _, kind, label, f, _ in rs:
        e = by.get(os.path.realpath(f))
        size = os.path.getsize(f)
        kld = e["kld_mean"] if e and not e.get("error") else None
        line = (f"| {label} | {kind} | {size} | {'yes' if size <= budget else 'NO'} | {bpw(f):.3f} | "
                + (f"{kld:.5f} ± {e['kld_stderr']:.5f} | {e['same_top_pct']:.2f} | {e['ppl']:.3f} |" if kld is not None else "failed | | |"))
        print(line)
        if kld is not None and size <= budget and (kind not in best or kld < best[kind][0]):
            best[kind] = (kld, label)
    print()
    if all(k in best for k in ("fixed", "hand", "kiln")):
        k, fx, h = best["kiln"][0], best["fixed"][0], best["hand"]
        ok = k <= 0.7 * fx and k < h[0]
        print(f"kiln / llama.cpp {b}: {k/fx:.3f} (goal <= 0.7); kiln / best hand mix ({h[1]}): {k/h[0]:.3f} (goal < 1): "
              f"{'goal met' if ok else 'GOAL NOT MET'}")
        print()
q4 = os.path.join(work, "llama-Q4_K_M.gguf")
e = by.get(os.path.realpath(q4))
print(f"llama.cpp's Q4_K_M with the same imatrix: {os.path.getsize(q4)} bytes ({os.path.getsize(q4)/1048576:.2f} MiB), "
      f"{bpw(q4):.3f} bpw" + (f", mean KLD {e['kld_mean']:.5f}, same top {e['same_top_pct']:.2f} %, PPL {e['ppl']:.3f}" if e and not e.get('error') else "")
      + ". The reference was dequantized from the published Q4_K_M, so a requantization that"
      " chooses the types that file had reproduces its weights nearly exactly: Q4_K_M's size is"
      " roughly where any mix can reach KLD near zero on this reference, and below it the loss"
      " is what the budget forces. kiln's measured errors find this by themselves (tensors whose"
      " measured error is zero at the type they came from), without being told.")
PY
sed -i "1a\\
\\
made by \`bash benches/budget/run.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))" benches/budget/results.md
cat benches/budget/results.md
