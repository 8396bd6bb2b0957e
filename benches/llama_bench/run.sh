#!/usr/bin/env bash
# kiln bench against llama.cpp's own llama-bench, same file, same settings, alternating rounds.
#
#   bash benches/llama_bench/run.sh [GGUF] [THREADS] [ROUNDS]
#
# llama-bench is built from the llama.cpp source that llama-cpp-sys-2 0.1.161 bundles (the
# library kiln links) plus llama-bench's source from the llama-cpp-python sdist on PyPI (the
# crate's copy omits tools/), with the crate's own build flags, in target/llama-bench.
# Default file: the demo's fixture q8_0 (run `cargo run --release -- demo` first).
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
  cmake -S "$lb/src" -B "$lb/build" -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_C_FLAGS=-m64 -march=x86-64" "-DCMAKE_CXX_FLAGS=-m64 -march=x86-64" \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$lb/build" --target llama-bench -j"$(nproc)" >/dev/null
fi
cargo build --release --quiet
python3 benches/llama_bench/compare.py "$file" "$threads" "$rounds" "$lb/build/bin/llama-bench" target/release/kiln
