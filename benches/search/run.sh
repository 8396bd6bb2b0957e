#!/usr/bin/env bash
# The thorough block search (`kiln quantize --search thorough`, issue 14 section 3) against
# ggml's own search on the real Gemma 3 270M: the same file types, the same sizes, KLD against
# the f32 reference.
#
#   bash benches/search/run.sh [WORKDIR]     (default: $CARGO_TARGET_DIR/search-bench)
#   TYPES="Q3_K_M Q4_0" (default)  IMATRIX=FILE (optional: the same imatrix for both searches)
#
# - reference: the f32 Gemma 3 270M of benches/gemma3 (made as benches/gemma3/run.sh makes it
#   when missing), itself requantized from the published Q4_K_M: a Q4_K_M requantization
#   reproduces most of its weights exactly, so Q4_K_M says little here; lower types do.
# - evaluation: `kiln eval` (llama-perplexity --kl-divergence), fixtures/eval/text.txt, -c 512.
# Writes benches/search/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
tdir=${CARGO_TARGET_DIR:-target}
work=${1:-$tdir/search-bench}
threads=${THREADS:-$(nproc)}
types=${TYPES:-Q3_K_M Q4_0}
mkdir -p "$work"
. benches/gemma3/reference.sh
im=()
[ -z "${IMATRIX:-}" ] || im=(--imatrix "$IMATRIX")
: >"$work/rows.tsv"
files=()
for t in $types; do
  for s in ggml thorough; do
    f="$work/gemma-$t-$s.gguf"
    t0=$(date +%s.%N)
    $kiln quantize -t "$t" --search "$s" "${im[@]}" "$ref" -o "$f" --force --no-checksum --threads "$threads" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo -e "$t\t$s\t$f\t$(echo "$t1 - $t0" | bc)" >>"$work/rows.tsv"
    files+=("$f")
  done
done
$kiln eval "${files[@]}" --reference "$ref" -c 512 --threads "$threads" --no-questions --json >"$work/eval.json" 2>"$work/eval.log"
python3 - "$work" "${IMATRIX:-none}" >benches/search/results.md <<'PY'
import json, os, sys
work, imatrix = sys.argv[1:3]
ev = json.load(open(os.path.join(work, "eval.json")))
if isinstance(ev, dict):
    ev = ev.get("results", ev.get("files", []))
by = {os.path.realpath(r["model_filename"]): r for r in ev}
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(work, "rows.tsv"))]
print("# Thorough block search on Gemma 3 270M: `--search thorough` against ggml's search")
print()
print(f"reference: gemma-3-270m-F32.gguf (f32, requantized from the published Q4_K_M); "
      f"importance matrix: {imatrix}; evaluation: fixtures/eval/text.txt, -c 512.")
print()
print("| type | search | bytes | quantize s | mean KLD | same top % | PPL |")
print("|---|---|---:|---:|---:|---:|---:|")
for t, s, f, secs in rows:
    e = by.get(os.path.realpath(f))
    ok = e and not e.get("error")
    print(f"| {t} | {s} | {os.path.getsize(f)} | {float(secs):.0f} | "
          + (f"{e['kld_mean']:.5f} ± {e['kld_stderr']:.5f} | {e['same_top_pct']:.2f} | {e['ppl']:.3f} |" if ok else "failed | | |"))
PY
sed -i "1a\\
\\
made by \`bash benches/search/run.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))" benches/search/results.md
cat benches/search/results.md
