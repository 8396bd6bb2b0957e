#!/usr/bin/env bash
# kiln bench against llama.cpp's own llama-bench, same file, same settings, alternating rounds.
#
#   bash benches/llama_bench/run.sh [GGUF] [THREADS] [ROUNDS]
#
# llama-bench is built from the llama.cpp source that llama-cpp-sys-2 0.1.161 bundles (the
# library kiln links) plus llama-bench's source from the llama-cpp-python sdist on PyPI (the
# crate's copy omits tools/), the way llama.cpp's README says (cmake, Release, defaults: so
# GGML_NATIVE, ggml's CPU backend compiled for this machine, as kiln's own build now is), in
# target/llama-bench. REPS sets -r (default 10).
# Default file: the demo's fixture q8_0 (run the README's demo command first).
set -euo pipefail
cd "$(dirname "$0")/../.."
file=${1:-out/fixture-llama-Q8_0.gguf}
threads=${2:-1}
rounds=${3:-10}
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
cargo build --release --quiet
python3 benches/llama_bench/compare.py "$file" "$threads" "$rounds" "$lb/build/bin/llama-bench" target/release/kiln
