#!/usr/bin/env bash
# kiln bench against llama.cpp's own llama-bench, same files, same settings, alternating rounds.
#
#   bash benches/llama_bench/run.sh [GGUF...]      (env: THREADS="1 2", ROUNDS=10, REPS=10)
#
# llama-bench is built from the llama.cpp source that llama-cpp-sys-2 0.1.161 bundles (the
# library kiln links) plus llama-bench's source from the llama-cpp-python sdist on PyPI (the
# crate's copy omits tools/), the way llama.cpp's README says (cmake, Release, defaults: so
# GGML_NATIVE, ggml's CPU backend compiled for this machine, as kiln's own build now is), in
# target/llama-bench. REPS sets -r (default 10), ROUNDS the alternating rounds per file and
# thread count (default 10), THREADS the thread counts (default "1 2").
# Default files: the real Gemma 3 270M (benches/gemma3/fetch.sh) requantized to f32 by kiln, then
# F16, Q8_0, Q4_K_M and Q2_K made from that f32 by kiln, in target/llama-bench/gemma.
# Prints the CPU and both sides' ggml CPU features, then a markdown table (the README's).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-1 2}
rounds=${ROUNDS:-10}
lb=target/llama-bench
if [ ! -x "$lb/build/bin/llama-bench" ]; then
  src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -1)
  rm -rf "$lb" && mkdir -p "$lb/sdist"
  python3 -m pip install --quiet scikit-build-core
  python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d "$lb/sdist"
  tar -xzf "$lb"/sdist/llama_cpp_python-*.tar.gz -C "$lb/sdist"
  cp -r "$src" "$lb/src"
  mkdir -p "$lb/src/tools/llama-bench"
  cp "$lb"/sdist/llama_cpp_python-*/vendor/llama.cpp/tools/llama-bench/* "$lb/src/tools/llama-bench/"
  echo 'add_subdirectory(llama-bench)' > "$lb/src/tools/CMakeLists.txt"
  # llama.cpp's README: cmake -B build && cmake --build build --config Release. The extra
  # options only leave out what llama-bench does not need (no network here, no tests).
  cmake -S "$lb/src" -B "$lb/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >/dev/null
  cmake --build "$lb/build" --target llama-bench -j"$(nproc)" >/dev/null
fi
[ -n "${BUILD_ONLY:-}" ] && exit 0
cargo build --release --quiet --bin kiln
kiln=${CARGO_TARGET_DIR:-target}/release/kiln
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  g=$lb/gemma
  mkdir -p "$g"
  src=$(bash benches/gemma3/fetch.sh)
  [ -f "$g/gemma-3-270m-F32.gguf" ] || $kiln quantize -t f32 --allow-requantize "$src" -o "$g/gemma-3-270m-F32.gguf" >/dev/null
  for t in F16 Q8_0 Q4_K_M Q2_K; do
    [ -f "$g/gemma-3-270m-$t.gguf" ] || $kiln quantize -t "$t" "$g/gemma-3-270m-F32.gguf" -o "$g/gemma-3-270m-$t.gguf" >/dev/null
    files+=("$g/gemma-3-270m-$t.gguf")
  done
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "llama-bench: $("$lb/build/bin/llama-bench" --list-devices 2>/dev/null | head -1 || true)"
echo "llama-bench build: $(grep -E '^(CMAKE_BUILD_TYPE|GGML_NATIVE|GGML_OPENMP):' "$lb/build/CMakeCache.txt" | tr '\n' ' ')"
echo "kiln: $($kiln bench -p 0 -n 1 -r 1 -t 1 "${files[0]}" 2>/dev/null | grep -m1 'CPU backend features' || true)"
echo "settings: -p 512 -n 128 -r ${REPS:-10} -fa 0, $rounds alternating rounds, threads $threads"
echo
echo "| file | threads | test | llama-bench t/s, median (min-max) | kiln bench t/s, median (min-max) | kiln / llama-bench |"
echo "|---|---:|---|---:|---:|---:|"
for f in "${files[@]}"; do
  for t in $threads; do
    python3 benches/llama_bench/compare.py "$f" "$t" "$rounds" "$lb/build/bin/llama-bench" "$kiln" | grep '^|'
  done
done
