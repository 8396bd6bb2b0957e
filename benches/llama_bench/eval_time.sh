#!/usr/bin/env bash
# kiln eval's wall time against llama-perplexity's, same model files, same text, same threads.
#
#   bash benches/llama_bench/eval_time.sh [TEXT]      (env: THREADS=2, CTX=512, ROUNDS=3)
#
# llama-perplexity is built beside llama-bench (benches/llama_bench/run.sh builds that tree: the
# llama.cpp source kiln links plus the tools' sources from the llama-cpp-python sdist, cmake
# Release defaults). The job is llama-perplexity's KL-divergence workflow: the reference (the
# real Gemma 3 270M at F32) once with --kl-divergence-base, then Q8_0, Q4_K_M and Q2_K each with
# --kl-divergence against it; kiln's is one `kiln eval Q8_0 Q4_K_M Q2_K --reference F32`
# (reference logits cached the same way, questions off: llama-perplexity has none). Each side's
# wall time is the whole job, model loads included, with a fresh cache; rounds alternate.
# TEXT defaults to the bundled evaluation text.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-2}
ctx=${CTX:-512}
rounds=${ROUNDS:-3}
text=${1:-fixtures/eval/text.txt}
lb=target/llama-bench
BUILD_ONLY=1 bash benches/llama_bench/run.sh
if [ ! -x "$lb/build/bin/llama-perplexity" ]; then
  cp "$lb"/sdist/llama_cpp_python-*/vendor/llama.cpp/tools/perplexity/* "$lb/src/tools/perplexity/"
  grep -q perplexity "$lb/src/tools/CMakeLists.txt" || echo 'add_subdirectory(perplexity)' >> "$lb/src/tools/CMakeLists.txt"
  cmake -S "$lb/src" -B "$lb/build" >/dev/null
  cmake --build "$lb/build" --target llama-perplexity -j"$(nproc)" >/dev/null
fi
cargo build --release --quiet --bin kiln
kiln=target/eval-time-kiln
cp "${CARGO_TARGET_DIR:-target}/release/kiln" "$kiln"
g=$lb/gemma
# the Gemma files (made by run.sh's default run, or now)
if [ ! -f "$g/gemma-3-270m-Q2_K.gguf" ]; then
  mkdir -p "$g"
  src=$(bash benches/gemma3/fetch.sh)
  [ -f "$g/gemma-3-270m-F32.gguf" ] || $kiln quantize -t f32 --allow-requantize "$src" -o "$g/gemma-3-270m-F32.gguf" >/dev/null
  for t in Q8_0 Q4_K_M Q2_K; do
    [ -f "$g/gemma-3-270m-$t.gguf" ] || $kiln quantize -t "$t" "$g/gemma-3-270m-F32.gguf" -o "$g/gemma-3-270m-$t.gguf" >/dev/null
  done
fi
ref=$g/gemma-3-270m-F32.gguf
files=("$g/gemma-3-270m-Q8_0.gguf" "$g/gemma-3-270m-Q4_K_M.gguf" "$g/gemma-3-270m-Q2_K.gguf")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
llama_job() {
  rm -f "$work/base.bin"
  "$lb/build/bin/llama-perplexity" -m "$ref" -f "$text" -c "$ctx" -t "$threads" --kl-divergence-base "$work/base.bin" >"$work/lp-ref.log" 2>&1
  for f in "${files[@]}"; do
    "$lb/build/bin/llama-perplexity" -m "$f" -c "$ctx" -t "$threads" --kl-divergence-base "$work/base.bin" --kl-divergence >"$work/lp-$(basename "$f").log" 2>&1
  done
}
kiln_job() {
  rm -rf "$work/cache"
  "$kiln" eval "${files[@]}" --reference "$ref" --text "$text" -c "$ctx" --threads "$threads" --no-questions --cache-dir "$work/cache" --json >"$work/kiln.json" 2>"$work/kiln.log"
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "job: reference $(basename "$ref") + KLD of ${#files[@]} files, text $text ($(wc -c <"$text") bytes), -c $ctx, $threads threads, $rounds alternating rounds"
lp=() kl=()
for r in $(seq "$rounds"); do
  t0=$(now); llama_job; t1=$(now); kiln_job; t2=$(now)
  lp+=("$(echo "$t1 - $t0" | bc)") kl+=("$(echo "$t2 - $t1" | bc)")
done
python3 - "$work" "${lp[*]}" "${kl[*]}" "${files[@]}" <<'PY'
import json, re, statistics, sys, os
work, lp, kl, files = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()], sys.argv[4:]
k = json.load(open(os.path.join(work, "kiln.json")))
print()
print("| file | llama-perplexity PPL | kiln PPL | llama-perplexity mean KLD | kiln mean KLD |")
print("|---|---:|---:|---:|---:|")
for f, r in zip(files, k):
    log = open(os.path.join(work, "lp-" + os.path.basename(f) + ".log")).read()
    ppl = re.search(r"Mean\s+PPL\(Q\)\s*:\s*([0-9.]+)", log)
    kld = re.search(r"Mean\s+KLD:\s*([0-9.]+)", log)
    print(f"| {os.path.basename(f)} | {ppl.group(1) if ppl else '?'} | {r['ppl']:.4f} | {kld.group(1) if kld else '?'} | {r['kld_mean']:.6f} |")
print()
m = lambda v: statistics.median(v)
print("| job | llama-perplexity s, median (min-max) | kiln eval s, median (min-max) | kiln / llama-perplexity |")
print("|---|---:|---:|---:|")
print(f"| reference + {len(files)} files | {m(lp):.2f} ({min(lp):.2f}-{max(lp):.2f}) | {m(kl):.2f} ({min(kl):.2f}-{max(kl):.2f}) | {m(kl)/m(lp):.3f} |")
PY
