#!/usr/bin/env bash
# Byte-identity of two kiln builds (the proof for a change of shape): converts the fixture
# checkpoint of every family (Llama with SentencePiece, Qwen2 and Qwen3 with trained BPE, Gemma 2
# and Gemma 3 with SentencePiece, Gemma 3 with BPE) to every file type with both binaries, from
# the checkpoint and from an F32 GGUF, with --no-checksum and with kiln's checksum, and reports
# any file that differs.
#
#   bash benches/compare_builds.sh OLD_KILN NEW_KILN [WORKDIR]
#
# The fixtures are written by `kiln-fixtures make-fixture` (this checkout's fixtures crate, or the
# binary in $KILN_FIXTURES).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "$1"); new=$(realpath "$2")
work=${3:-target/compare-builds}
types=(f32 f16 bf16 q8_0 q6_K q5_K_M q5_K_S q5_1 q5_0 q4_K_M q4_K_S q4_1 q4_0 q3_K_L q3_K_M q3_K_S q2_K)
fx=${KILN_FIXTURES:-}
if [ -z "$fx" ]; then cargo build --release --quiet -p kiln-fixtures; fx=target/release/kiln-fixtures; fi
mkdir -p "$work"
fixtures=("llama:" "qwen2:--arch qwen2 --bpe 1024" "qwen3:--arch qwen3 --bpe 1024"
  "gemma2:--arch gemma2" "gemma3:--arch gemma3" "gemma3-bpe:--arch gemma3 --bpe 700")
same=0; differ=0
both() { # label, kiln args... : runs old and new, compares the two outputs
  local label=$1; shift
  rm -f "$work/old.gguf" "$work/new.gguf"
  local o=0 n=0
  "$old" "$@" -o "$work/old.gguf" --force >/dev/null 2>&1 || o=$?
  "$new" "$@" -o "$work/new.gguf" --force >/dev/null 2>&1 || n=$?
  if [ $o -ne 0 ] || [ $n -ne 0 ]; then
    differ=$((differ+1)); echo "FAILED: $label (exit old $o, new $n)"
  elif cmp -s "$work/old.gguf" "$work/new.gguf"; then
    same=$((same+1))
  else
    differ=$((differ+1)); echo "DIFFERS: $label"
  fi
}
for f in "${fixtures[@]}"; do
  name=${f%%:*}; args=${f#*:}
  ck="$work/$name"
  [ -f "$ck/config.json" ] || $fx make-fixture "$ck" $args
  for t in "${types[@]}"; do
    both "$name $t --no-checksum" quantize -t "$t" --no-checksum "$ck"
    both "$name $t" quantize -t "$t" "$ck"
  done
  "$new" quantize -t f32 --no-checksum "$ck" -o "$work/$name-f32.gguf" --force >/dev/null
  for t in "${types[@]}"; do
    both "$name $t from F32 GGUF" quantize -t "$t" --no-checksum "$work/$name-f32.gguf"
  done
done
echo "$same files identical, $differ differ"
[ "$differ" -eq 0 ]
