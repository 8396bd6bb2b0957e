#!/usr/bin/env bash
# Whole files, f32 GGUF -> every type, kiln against llama.cpp's own quantizer, on one thread and
# on all cores: wall time of `kiln quantize` (as users run it: checksum written, output read
# back and verified) and of `kiln llama-quantize` (llama_model_quantize, what llama-quantize
# calls, same llama.cpp build), same input, same thread count; whether the files agree (cmp of
# kiln's --no-checksum output, timed separately, with llama.cpp's). Writes a markdown table.
#
#   bash benches/quantize_files.sh [WORKDIR] [TYPES]
#   QUICK=1 bash benches/quantize_files.sh      # a 2-layer model and four types: a smoke test
#
# The default types are every llama.cpp file type kiln writes. The lowest-bit ones (IQ2_XXS,
# IQ2_XS, IQ2_S, IQ2_M, IQ1_S, IQ1_M, IQ3_XXS, IQ3_XS, IQ3_M, Q2_K_S, and any other type that
# `kiln quantize --dry-run` says needs one on this model, as llama.cpp refuses it without one) are
# quantized with an importance matrix, the same file given to both programs
# (`--imatrix`); it is `kiln imatrix` of the synthetic model on the bundled text
# (fixtures/eval/text.txt, its first chunk of 512 tokens: about 15 s at 20 layers), computed once
# and kept in WORKDIR. The other types are quantized without one.
#
# The model is a synthetic Llama-architecture f32 GGUF whose rows are all multiples of 256, so
# every tensor takes the asked type (no fallbacks): `kiln-fixtures make-fixture` with hidden
# 1024, FFN 2816, 20 layers, 16 heads / 4 KV heads, vocab 32000 (290M weights, 1.16 GB as f32).
# Takes about 45 minutes on 2 cores with every type (llama.cpp's i-quant searches are slow): run it
# on a quiet machine. kiln's time includes its fsync of the output (llama.cpp does not sync), so
# disk traffic from other programs shows up in kiln's column, most in the cheap types.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-quantize-files}
default_types=f16,bf16,q8_0,q6_K,q5_K_M,q5_K_S,q5_1,q5_0,q4_K_M,q4_K_S,q4_1,q4_0,q3_K_L,q3_K_M,q3_K_S,q2_K,iq4_nl,iq4_xs,iq3_s,iq3_xxs,tq2_0,tq1_0,q2_K_S,iq3_m,iq3_xs,iq2_m,iq2_s,iq2_xs,iq2_xxs,iq1_m,iq1_s,q2_0,q1_0,mxfp4_moe
# The types given the importance matrix.
imatrix_types=" q2_k_s iq3_xxs iq3_m iq3_xs iq2_m iq2_s iq2_xs iq2_xxs iq1_m iq1_s "
layers=20
if [ -n "${QUICK:-}" ]; then
  work=${1:-target/bench-quantize-files-quick}
  default_types=q4_0,q4_K_M,q3_K_M,q2_K_S
  layers=2
fi
types=${2:-$default_types}
mkdir -p "$work"
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p kiln -p kiln-fixtures --bins
kiln=$target/release/kiln
if [ ! -f "$work/ck/config.json" ]; then
  "$target/release/kiln-fixtures" make-fixture "$work/ck" --hidden 1024 --intermediate 2816 \
    --layers "$layers" --heads 16 --kv-heads 4
fi
[ -f "$work/f32.gguf" ] || $kiln quantize -t f32 --no-checksum "$work/ck" -o "$work/f32.gguf" --force >/dev/null 2>&1
imatrix="$work/imatrix.gguf"
needs_imatrix() {
  [[ "$imatrix_types" == *" ${1,,} "* ]] && return 0
  local plan
  plan=$($kiln quantize -t "$1" --dry-run "$work/f32.gguf" -o "$work/dry.gguf" 2>&1 || true)
  [[ "${plan,,}" == *"importance matrix"* ]]
}
for t in ${types//,/ }; do
  if needs_imatrix "$t" && [ ! -f "$imatrix" ]; then
    $kiln imatrix "$work/f32.gguf" --text fixtures/eval/text.txt --chunks 1 -o "$imatrix" >/dev/null 2>&1 ||
      { echo "kiln imatrix failed" >&2; exit 1; }
  fi
done
seconds() { # command... -> wall seconds (GNU time)
  # Every timed command starts from the same state: earlier outputs written back (`sync`, so
  # their writeback does not land in this command's time) and the input in the page cache (the
  # first type would otherwise read 1.1 GB from disk, the second program reading it cached).
  sync
  cat "$work/f32.gguf" >/dev/null
  /usr/bin/time -f "%e" -o "$work/time.txt" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  cat "$work/time.txt"
}
all=$(nproc)
out="$work/quantize_files.md"
{
  echo "machine: $all cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); kiln SIMD: ${KILN_SIMD:-best}"
  echo "model: $(du -m "$work/f32.gguf" | cut -f1) MB f32 GGUF, $layers layers, hidden 1024, FFN 2816, vocab 32000"
  echo
  echo "| type | threads | kiln s | llama.cpp s | kiln / llama.cpp | files identical |"
  echo "|---|---:|---:|---:|---:|---|"
} | tee "$out"
for t in ${types//,/ }; do
  im=()
  if needs_imatrix "$t"; then im=(--imatrix "$imatrix"); fi
  for th in 1 "$all"; do
    ks=$(seconds $kiln quantize -t "$t" --threads "$th" "${im[@]}" "$work/f32.gguf" -o "$work/kiln.gguf" --force)
    $kiln inspect --verify "$work/kiln.gguf" | grep -q "checksum: ok" || { echo "$t: checksum does not verify" >&2; exit 1; }
    ls=$(seconds $kiln llama-quantize "$work/f32.gguf" "$work/llama.gguf" -t "$t" --threads "$th" "${im[@]}")
    same=no
    if [ "$th" = 1 ]; then
      $kiln quantize -t "$t" --no-checksum --threads "$all" "${im[@]}" "$work/f32.gguf" -o "$work/kiln-plain.gguf" --force >/dev/null 2>&1
      cmp -s "$work/kiln-plain.gguf" "$work/llama.gguf" && same=yes
    else
      same="(see 1 thread)"
    fi
    label=$t
    [ ${#im[@]} -gt 0 ] && label="$t (imatrix)"
    echo "| $label | $th | $ks | $ls | $(python3 -c "print(f'{$ks/$ls:.2f}')") | $same |" | tee -a "$out"
    rm -f "$work/kiln.gguf" "$work/kiln-plain.gguf" "$work/llama.gguf"
  done
done
echo "table: $out"
