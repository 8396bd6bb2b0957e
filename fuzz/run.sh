#!/usr/bin/env bash
# Fuzzes each target for SECONDS (default 600), two at a time, from the seeds of seeds.py.
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz). Crashes land in
# fuzz/artifacts/<target>/; logs in fuzz/logs/<target>.log (last line: libFuzzer's totals).
# Usage: bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_header gguf_reader spm_tokenizer tokenizer_json imatrix)
bpe=../target/tmp/convert_vs_llama/qwen2-bpe
if [ -f "$bpe/tokenizer.json" ]; then python3 seeds.py "$bpe"; else python3 seeds.py; fi
cargo +nightly fuzz build -s none
mkdir -p logs
printf '%s\n' "${targets[@]}" | xargs -P 2 -I{} sh -c \
  "cargo +nightly fuzz run -s none {} -- -max_total_time=$secs -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 > logs/{}.log 2>&1; echo {} exit \$?"
for t in "${targets[@]}"; do
  echo "== $t"
  grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::average_exec_per_sec|SUMMARY|panicked|Test unit written" "logs/$t.log" | tail -5 || true
done
