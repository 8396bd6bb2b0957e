#!/usr/bin/env bash
# `--calibrate-sensitivity` on the real Gemma 3 270M: the budget mix with the loss model
# calibrated by measured per-group KLD, against the uncalibrated budget mix, at the byte sizes
# of llama.cpp's Q3_K_M and Q2_K files (the budgets of benches/budget/run.sh).
#
#   bash benches/budget/sensitivity.sh [WORKDIR]     (default: $CARGO_TARGET_DIR/budget-bench)
#
# - reference, importance matrix and evaluation text as in benches/budget/run.sh (the f32
#   Gemma 3 270M; `kiln imatrix` on llama.cpp's tools/completion/README.md; `kiln eval` on
#   fixtures/eval/text.txt, -c 512); the budgets are llama.cpp's Q3_K_M and Q2_K file sizes
#   (made here as run.sh makes them).
# - sensitivity text: the calibration text (not the evaluation text), SENS_CHUNKS chunks of 512
#   tokens per measurement (default 2).
# - BUDGETS="Q3_K_M" to run one budget; IMATRIX_CHUNKS=N for an importance matrix of the first N
#   chunks only (when WORKDIR has none yet).
# Writes benches/budget/sensitivity.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
tdir=${CARGO_TARGET_DIR:-target}
work=${1:-$tdir/budget-bench}
threads=${THREADS:-$(nproc)}
chunks=${SENS_CHUNKS:-2}
mkdir -p "$work"
. benches/gemma3/reference.sh
cal=$(ls ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp/tools/completion/README.md | head -1)
text=fixtures/eval/text.txt
t0=$(date +%s)
if [ ! -f "$work/imatrix.gguf" ]; then
  $kiln imatrix "$ref" --text "$cal" --threads "$threads" ${IMATRIX_CHUNKS:+--chunks "$IMATRIX_CHUNKS"} -o "$work/imatrix.gguf" 2>"$work/imatrix.log"
fi
im=$work/imatrix.gguf
files=()
: >"$work/sens-rows.tsv"
for b in ${BUDGETS:-Q3_K_M Q2_K}; do
  f="$work/llama-$b.gguf"
  [ -f "$f" ] || $kiln quantize -t "$b" --imatrix "$im" "$ref" -o "$f" --force --no-checksum >/dev/null 2>&1
  budget=$(stat -c %s "$f")
  u="$work/kiln-budget-$b.gguf"
  [ -f "$u" ] || $kiln quantize --target-size "$budget" --imatrix "$im" "$ref" -o "$u" --force >"$work/kiln-$b.log"
  c="$work/kiln-budget-sens-$b.gguf"
  s0=$(date +%s)
  $kiln quantize --target-size "$budget" --imatrix "$im" "$ref" -o "$c" --force \
    --calibrate-sensitivity --sensitivity-text "$cal" --sensitivity-chunks "$chunks" --threads "$threads" \
    >"$work/kiln-sens-$b.log" 2>"$work/kiln-sens-$b.err"
  s1=$(date +%s)
  echo -e "$b\t$budget\t$u\t$c\t$((s1 - s0))" >>"$work/sens-rows.tsv"
  files+=("$u" "$c")
done
$kiln eval "${files[@]}" --reference "$ref" --text "$text" -c 512 --threads "$threads" --no-questions --json >"$work/sens-eval.json" 2>"$work/sens-eval.log"
t1=$(date +%s)
python3 - "$work" "$cal" "$text" "$chunks" "$((t1 - t0))" >benches/budget/sensitivity.md <<'PY'
import json, os, sys
work, cal, text, chunks, secs = sys.argv[1:6]
ev = json.load(open(os.path.join(work, "sens-eval.json")))
if isinstance(ev, dict):
    ev = ev.get("results", ev.get("files", []))
by = {os.path.realpath(r["model_filename"]): r for r in ev}
print("# `--calibrate-sensitivity` on Gemma 3 270M: calibrated against uncalibrated budget mixes")
print()
im_chunks = os.environ.get("IMATRIX_CHUNKS")
print(f"reference: gemma-3-270m-F32.gguf; importance matrix ({'first ' + im_chunks + ' chunks' if im_chunks else 'all chunks'}) and sensitivity text: {os.path.basename(os.path.dirname(os.path.dirname(cal)))}/"
      f"completion/README.md of the pinned llama.cpp ({chunks} chunks of 512 tokens per measurement); "
      f"evaluation text: {text} (-c 512, not the sensitivity text). Whole run {secs} s.")
print()
for line in open(os.path.join(work, "sens-rows.tsv")):
    b, budget, u, c, sens_secs = line.rstrip("\n").split("\t")
    budget = int(budget)
    print(f"## Budget: llama.cpp's {b} file, {budget} bytes")
    print()
    print("| file | bytes | fits | mean KLD | same top % | PPL |")
    print("|---|---:|---|---:|---:|---:|")
    res = {}
    for label, f in (("kiln --target-size", u), ("kiln --target-size --calibrate-sensitivity", c)):
        e = by.get(os.path.realpath(f))
        size = os.path.getsize(f)
        if e and not e.get("error"):
            res[label] = e["kld_mean"]
            print(f"| {label} | {size} | {'yes' if size <= budget else 'NO'} | {e['kld_mean']:.5f} ± {e['kld_stderr']:.5f} | {e['same_top_pct']:.2f} | {e['ppl']:.3f} |")
        else:
            print(f"| {label} | {size} | {'yes' if size <= budget else 'NO'} | failed | | |")
    if len(res) == 2:
        a, b2 = res.values()
        print()
        print(f"calibrated / uncalibrated mean KLD: {b2 / a:.3f} (the sensitivity measurement took {sens_secs} s)")
    print()
    print("Measured factors:")
    print()
    print("```")
    log = open(os.path.join(work, f"kiln-sens-{b}.log")).read().splitlines()
    start = next((i for i, l in enumerate(log) if l.startswith("group")), None)
    if start is not None:
        for l in log[start:]:
            if not l.strip() or l.startswith("/") or " budget " in l:
                break
            print(l)
    print("```")
    print()
PY
sed -i "1a\\
\\
made by \`bash benches/budget/sensitivity.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))" benches/budget/sensitivity.md
cat benches/budget/sensitivity.md
