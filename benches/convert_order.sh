#!/usr/bin/env bash
# kiln against llama.cpp's own converter, byte for byte: for each checkpoint folder, runs
# convert_hf_to_gguf.py (the copy in the llama-cpp-python sdist, with its gguf-py) at the
# checkpoint's precision and `kiln quantize --no-checksum` at the same type, and cmp's the two
# files (tensor order, metadata keys and data together). Needs python3 with torch, numpy,
# safetensors, sentencepiece, pyyaml and transformers (convert imports them); not installed on
# the development machine, so this was not run there (tests/tensor_order.rs checks the order
# rule against an expectation written from convert's source instead).
#
#   bash benches/convert_order.sh LLAMA_CPP_DIR CHECKPOINT_DIR... [-- TYPE]
#
# TYPE is bf16 (default), f16 or f32. Without checkpoints, the fixture checkpoints are made
# with `kiln-fixtures` (Llama + SentencePiece, Qwen3 MoE, Mixtral) into target/convert-order.
set -euo pipefail
cd "$(dirname "$0")/.."
llama=${1:?usage: convert_order.sh LLAMA_CPP_DIR [CHECKPOINT_DIR...] [-- TYPE]}
shift
dirs=()
type=bf16
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then type=${2:-bf16}; break; fi
  dirs+=("$1"); shift
done
cargo build --release --quiet --bin kiln --bin kiln-fixtures
kiln=target/release/kiln
work=target/convert-order
mkdir -p "$work"
if [ ${#dirs[@]} -eq 0 ]; then
  for arch in llama qwen3moe mixtral; do
    target/release/kiln-fixtures make-fixture "$work/$arch" --arch "$arch" >/dev/null
    dirs+=("$work/$arch")
  done
fi
status=0
for d in "${dirs[@]}"; do
  name=$(basename "$d")
  PYTHONPATH="$llama/gguf-py:$llama" python3 "$llama/convert_hf_to_gguf.py" "$d" \
    --outtype "$type" --outfile "$work/$name-convert.gguf" >/dev/null
  $kiln quantize -t "$type" --no-checksum --force "$d" -o "$work/$name-kiln.gguf" >/dev/null
  if cmp -s "$work/$name-convert.gguf" "$work/$name-kiln.gguf"; then
    echo "$name $type: identical"
  else
    echo "$name $type: DIFFERENT ($(cmp "$work/$name-convert.gguf" "$work/$name-kiln.gguf" | head -1))"
    status=1
  fi
done
exit $status
