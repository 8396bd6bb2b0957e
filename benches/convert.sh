#!/usr/bin/env bash
# Whole-file conversion, kiln against llama.cpp's own quantizer, side by side on one machine:
# wall time and peak resident memory (GNU time) of `kiln quantize` and of `kiln llama-quantize`
# (llama_model_quantize, what llama-quantize calls) from the same f32 GGUF, and whether the two
# output files are byte-identical (cmp). kiln is timed as users run it (writing its checksum)
# and with --no-checksum, whose file is the one compared with cmp (the checksum adds two
# metadata keys). Also kiln straight from the safetensors checkpoint.
#
#   bash benches/convert.sh [WORKDIR] [TYPES]
#
# The model is a deterministic Llama-architecture checkpoint made by `kiln-fixtures make-fixture`
# (hidden 2048, FFN 5632, 12 layers, 16 heads / 4 KV heads, vocab 32000: 672M parameters,
# 1.3 GB of BF16 safetensors, 2.7 GB as f32 GGUF). Needs /usr/bin/time (Debian package time).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-convert}
types=${2:-q8_0,q6_K,q5_K_M,q4_K_M,q4_0,q3_K_M,q2_K}
mkdir -p "$work"
cargo build --release --quiet --bin kiln --bin kiln-fixtures
kiln=target/release/kiln
if [ ! -f "$work/ck/config.json" ]; then
  target/release/kiln-fixtures make-fixture "$work/ck" --hidden 2048 --intermediate 5632 --layers 12 --heads 16 --kv-heads 4
fi
[ -f "$work/f32.gguf" ] || $kiln quantize -t f32 --no-checksum "$work/ck" -o "$work/f32.gguf" --force >/dev/null 2>&1
measure() { # label, command... -> "seconds kilobytes"
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" >/dev/null 2>&1
  cat "$work/time.txt"
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| type | kiln s (from f32 GGUF) | kiln s, --no-checksum | llama.cpp s | kiln / llama.cpp time | kiln peak MB | llama.cpp peak MB | files identical | kiln s from safetensors | peak MB |"
echo "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
for t in ${types//,/ }; do
  read -r ks km < <(measure $kiln quantize -t "$t" "$work/f32.gguf" -o "$work/kiln-$t.gguf" --force)
  $kiln inspect --verify "$work/kiln-$t.gguf" | grep -q "checksum: ok" || { echo "$t: checksum does not verify"; exit 1; }
  read -r ns nm < <(measure $kiln quantize -t "$t" --no-checksum "$work/f32.gguf" -o "$work/kiln-plain-$t.gguf" --force)
  read -r ls lm < <(measure $kiln llama-quantize "$work/f32.gguf" "$work/llama-$t.gguf" -t "$t")
  read -r hs hm < <(measure $kiln quantize -t "$t" --no-checksum "$work/ck" -o "$work/kiln-hf-$t.gguf" --force)
  same=no; cmp -s "$work/kiln-plain-$t.gguf" "$work/llama-$t.gguf" && same=yes
  cmp -s "$work/kiln-hf-$t.gguf" "$work/llama-$t.gguf" || same="$same (from safetensors: differs)"
  echo "| $t | $ks | $ns | $ls | $(python3 -c "print(f'{$ks/$ls:.2f}')") | $((km/1024)) | $((lm/1024)) | $same | $hs | $((hm/1024)) |"
  rm -f "$work/kiln-$t.gguf" "$work/kiln-plain-$t.gguf" "$work/llama-$t.gguf" "$work/kiln-hf-$t.gguf"
done
