#!/usr/bin/env bash
# kiln imatrix against llama.cpp's own llama-imatrix: same model, same text, same settings.
#
#   bash benches/llama_bench/imatrix.sh [MODEL.gguf [TEXT]]     (env: THREADS=2, CTX=512)
#
# llama-imatrix is built as run.sh builds llama-bench: the llama.cpp source that
# llama-cpp-sys-2 0.1.161 bundles (the library kiln links) plus tools/imatrix from the
# llama-cpp-python 0.3.36 sdist, cmake Release defaults, in target/llama-imatrix.
# Default model: the real Gemma 3 270M (benches/gemma3/fetch.sh) requantized to f32 by kiln;
# default text: fixtures/eval/text.txt. Prints both wall times and, per tensor, whether the
# tensor sets and counts agree and the relative L2 difference of the sums (goal: < 1e-3).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${THREADS:-2}
ctx=${CTX:-512}
li=target/llama-imatrix
if [ ! -x "$li/build/bin/llama-imatrix" ]; then
  src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -1)
  rm -rf "$li" && mkdir -p "$li/sdist"
  python3 -m pip install --quiet scikit-build-core
  python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36 -d "$li/sdist"
  tar -xzf "$li"/sdist/llama_cpp_python-*.tar.gz -C "$li/sdist"
  cp -r "$src" "$li/src"
  mkdir -p "$li/src/tools/imatrix"
  cp "$li"/sdist/llama_cpp_python-*/vendor/llama.cpp/tools/imatrix/* "$li/src/tools/imatrix/"
  echo 'add_subdirectory(imatrix)' > "$li/src/tools/CMakeLists.txt"
  cmake -S "$li/src" -B "$li/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >/dev/null
  cmake --build "$li/build" --target llama-imatrix -j"$(nproc)" >/dev/null
fi
[ -n "${BUILD_ONLY:-}" ] && exit 0
cargo build --release --quiet --bin kiln
kiln=target/release/kiln
model=${1:-}
text=${2:-fixtures/eval/text.txt}
if [ -z "$model" ]; then
  mkdir -p "$li/gemma"
  model=$li/gemma/gemma-3-270m-F32.gguf
  [ -f "$model" ] || $kiln quantize -t f32 --allow-requantize "$(bash benches/gemma3/fetch.sh)" -o "$model" >/dev/null
fi
out=$li/out
mkdir -p "$out"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%d)"
echo "model: $model; text: $text; -c $ctx, $threads threads"
t0=$(date +%s.%N)
"$li/build/bin/llama-imatrix" -m "$model" -f "$text" -c "$ctx" -t "$threads" -o "$out/llama.gguf" >"$out/llama.log" 2>&1
t1=$(date +%s.%N)
$kiln imatrix "$model" --text "$text" -c "$ctx" --threads "$threads" -o "$out/kiln.gguf" 2>"$out/kiln.log"
t2=$(date +%s.%N)
python3 -c "import sys; a, b, c = map(float, sys.argv[1:]); print(f'wall: llama-imatrix {b - a:.1f} s, kiln imatrix {c - b:.1f} s')" "$t0" "$t1" "$t2"
python3 benches/llama_bench/imatrix_compare.py "$out/llama.gguf" "$out/kiln.gguf"
