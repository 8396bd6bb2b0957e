#!/usr/bin/env bash
# kiln against llama.cpp's own converter, byte for byte: for each checkpoint folder, runs
# convert_hf_to_gguf.py (the copy in the llama-cpp-python sdist, with its gguf-py) at the
# checkpoint's precision (config.json's torch_dtype) and `kiln quantize --no-checksum` at the
# same type, and cmp's the two files (metadata keys and their order, tensor order, data).
# Needs python3 with torch, numpy, safetensors, sentencepiece, pyyaml and transformers
# (convert imports them; `pip install torch transformers sentencepiece safetensors pyyaml
# protobuf` in a venv, then PYTHON=venv/bin/python).
#
#   bash benches/convert_order.sh LLAMA_CPP_DIR [CHECKPOINT_DIR...]
#
# Without checkpoints, every family's fixture checkpoint is made with `kiln-fixtures
# make-fixture --arch` into target/convert-order. The fixtures' tokenizers are BPEs trained
# by the fixture builder, whose hash is not in convert's chkhsh table (convert stops with
# "BPE pre-tokenizer was not recognized"); for those only, convert is run with its
# get_vocab_base_pre answering the pre-tokenizer kiln chose (printed in kiln's notes), so that
# everything else is compared.
set -euo pipefail
cd "$(dirname "$0")/.."
llama=${1:?usage: convert_order.sh LLAMA_CPP_DIR [CHECKPOINT_DIR...]}
shift
dirs=("$@")
py=${PYTHON:-python3}
cargo build --release --quiet --bin kiln
cargo build --release --quiet -p kiln-fixtures
tgt=${CARGO_TARGET_DIR:-target}
kiln=$tgt/release/kiln
work=target/convert-order
mkdir -p "$work"
if [ ${#dirs[@]} -eq 0 ]; then
  for arch in llama qwen2 qwen3 gemma2 gemma3 qwen3moe mixtral deepseek2 gpt-oss phi3 smollm3 \
      granite olmo2 mistral3 glm4moe ernie4_5-moe; do
    bpe=()
    # OLMo 2's converter reads tokenizer.json only: a trained BPE instead of the SentencePiece model.
    [ "$arch" = olmo2 ] && bpe=(--bpe 1024)
    "$tgt/release/kiln-fixtures" make-fixture "$work/$arch" --arch "$arch" "${bpe[@]}" >/dev/null
    dirs+=("$work/$arch")
  done
fi
cat > "$work/convert_wrap.py" <<'PY'
import os, runpy, sys
L = os.environ["LLAMA_CPP"]
sys.path[:0] = [L + "/gguf-py", L]
import conversion.base as b
orig = b.TextModel.get_vocab_base_pre
def patched(self, tokenizer):
    try:
        return orig(self, tokenizer)
    except NotImplementedError:
        return os.environ["KILN_PRE"]
b.TextModel.get_vocab_base_pre = patched
sys.argv = [L + "/convert_hf_to_gguf.py"] + sys.argv[1:]
runpy.run_path(L + "/convert_hf_to_gguf.py", run_name="__main__")
PY
status=0
for d in "${dirs[@]}"; do
  name=$(basename "$d")
  dt=$($py -c "import json,sys; c=json.load(open(sys.argv[1])); print(c.get('torch_dtype') or c.get('dtype') or 'float32')" "$d/config.json")
  case $dt in bfloat16) type=bf16;; float16) type=f16;; *) type=f32;; esac
  if ! $kiln quantize -t "$type" --no-checksum --force "$d" -o "$work/$name-kiln.gguf" 2> "$work/$name-kiln.log" >/dev/null; then
    echo "$name: kiln failed ($(tail -1 "$work/$name-kiln.log"))"; status=1; continue
  fi
  pre=$(grep -o 'pre-tokenizer "[^"]*"' "$work/$name-kiln.log" | head -1 | cut -d'"' -f2 || true)
  if ! KILN_PRE="$pre" LLAMA_CPP="$llama" $py "$work/convert_wrap.py" "$d" \
    --outtype "$type" --outfile "$work/$name-convert.gguf" > "$work/$name-convert.log" 2>&1; then
    echo "$name: convert failed ($(tail -1 "$work/$name-convert.log"))"; status=1; continue
  fi
  if cmp -s "$work/$name-convert.gguf" "$work/$name-kiln.gguf"; then
    echo "$name $type: identical ($(stat -c %s "$work/$name-kiln.gguf") bytes)"
  else
    echo "$name $type: DIFFERENT ($(cmp "$work/$name-convert.gguf" "$work/$name-kiln.gguf" | head -1))"
    status=1
  fi
done
exit $status
