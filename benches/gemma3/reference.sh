# Sourced, from the repository root with $tdir set (the cargo target folder), by the benches
# on the real Gemma 3 270M (benches/budget/run.sh, benches/budget/sensitivity.sh,
# benches/search/run.sh). Builds kiln (unless NO_BUILD is set) and sets:
#   kiln  the binary ($KILN, else $tdir/release/kiln)
#   ref   the f32 Gemma 3 270M of benches/gemma3, $tdir/gemma3-bench/gemma-3-270m-F32.gguf,
#         made when missing as benches/gemma3/run.sh makes it (requantized from the published
#         Q4_K_M GGUF that benches/gemma3/fetch.sh fetches)
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin kiln
kiln=${KILN:-$tdir/release/kiln}
ref=$tdir/gemma3-bench/gemma-3-270m-F32.gguf
if [ ! -f "$ref" ]; then
  mkdir -p "$(dirname "$ref")"
  src=$(bash benches/gemma3/fetch.sh)
  $kiln quantize --allow-requantize --no-checksum -t f32 "$src" -o "$ref" --force >/dev/null
fi
