#!/usr/bin/env bash
# kiln imatrix against llama.cpp's own llama-imatrix: same model, same text, same settings.
#
#   bash benches/llama_bench/imatrix.sh [MODEL.gguf [TEXT]]     (env: THREADS=2, CTX=512)
#
# llama-imatrix is built beside llama-bench, in run.sh's tree (target/llama-bench: the llama.cpp
# source that llama-cpp-sys-2 0.1.161 bundles, the library kiln links, plus the tools' sources
# from the llama-cpp-python 0.3.36 sdist, cmake Release defaults).
# Default model: the real Gemma 3 270M (benches/gemma3/fetch.sh) requantized to f32 by kiln;
# default text: fixtures/eval/text.txt. Prints both wall times and, per tensor, whether the
# tensor sets and counts agree and the relative L2 difference of the sums (goal: < 1e-3).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-2}
ctx=${CTX:-512}
lb=target/llama-bench
BUILD_ONLY=1 bash benches/llama_bench/run.sh
if [ ! -x "$lb/build/bin/llama-imatrix" ]; then
  mkdir -p "$lb/src/tools/imatrix"
  cp "$lb"/sdist/llama_cpp_python-*/vendor/llama.cpp/tools/imatrix/* "$lb/src/tools/imatrix/"
  grep -q imatrix "$lb/src/tools/CMakeLists.txt" || echo 'add_subdirectory(imatrix)' >> "$lb/src/tools/CMakeLists.txt"
  cmake -S "$lb/src" -B "$lb/build" >/dev/null
  cmake --build "$lb/build" --target llama-imatrix -j"$(nproc)" >/dev/null
fi
[ -n "${BUILD_ONLY:-}" ] && exit 0
cargo build --release --quiet --bin kiln
kiln=target/imatrix-kiln
cp "${CARGO_TARGET_DIR:-target}/release/kiln" "$kiln"
model=${1:-}
text=${2:-fixtures/eval/text.txt}
if [ -z "$model" ]; then
  mkdir -p "$lb/gemma"
  model=$lb/gemma/gemma-3-270m-F32.gguf
  [ -f "$model" ] || $kiln quantize -t f32 --allow-requantize "$(bash benches/gemma3/fetch.sh)" -o "$model" >/dev/null
fi
out=$lb/imatrix-out
mkdir -p "$out"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "model: $model; text: $text; -c $ctx, $threads threads"
t0=$(date +%s.%N)
"$lb/build/bin/llama-imatrix" -m "$model" -f "$text" -c "$ctx" -t "$threads" -o "$out/llama.gguf" >"$out/llama.log" 2>&1
t1=$(date +%s.%N)
$kiln imatrix "$model" --text "$text" -c "$ctx" --threads "$threads" -o "$out/kiln.gguf" 2>"$out/kiln.log"
t2=$(date +%s.%N)
python3 -c "import sys; a, b, c = map(float, sys.argv[1:]); print(f'wall: llama-imatrix {b - a:.1f} s, kiln imatrix {c - b:.1f} s')" "$t0" "$t1" "$t2"
python3 benches/llama_bench/imatrix_compare.py "$out/llama.gguf" "$out/kiln.gguf"
