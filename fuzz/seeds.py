#!/usr/bin/env python3
"""Writes small valid seed inputs for each fuzz target into fuzz/corpus/<target>/.

Seeds are built here byte by byte (no kiln, no gguf-py), so the fuzzers start from well-formed
files of every format and mutate from there. Usage: python3 fuzz/seeds.py [BPE_FIXTURE_DIR]
(BPE_FIXTURE_DIR: a folder with tokenizer.json and tokenizer_config.json, e.g. the Qwen2
fixture the tests write under target/tmp/convert_vs_llama/qwen2-bpe)."""
import json, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors ----
def safetensors(tensors, meta=None):
    header, data = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda n: struct.pack(f"<{n}f", *[(i % 7) * 0.25 - 0.5 for i in range(n)])
put("safetensors_header", "f32", safetensors([("a.weight", "F32", [2, 4], f32(8)), ("b", "F32", [3], f32(3))]))
put("safetensors_header", "bf16_f16", safetensors(
    [("model.embed_tokens.weight", "BF16", [4, 2], b"\x80\x3f" * 8), ("x", "F16", [2, 2], b"\x00\x3c" * 4)],
    meta={"format": "pt"}))
put("safetensors_header", "i64_f8", safetensors([("ids", "I64", [2], b"\x01" * 16), ("f8", "F8_E4M3", [4], b"\x02" * 4)]))
put("safetensors_header", "empty", safetensors([]))


# ---- GGUF ----
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == T_STR:
        return gstr(v)
    if t == T_ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)
    fmt = {T_U8: "B", T_I8: "b", T_U16: "H", T_I16: "h", T_U32: "I", T_I32: "i", T_F32: "f",
           T_BOOL: "?", T_U64: "Q", T_I64: "q", T_F64: "d"}[t]
    return struct.pack("<" + fmt, v)


def gguf(kvs, tensors, align=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    data, off = b"", 0
    for name, dims, ty, raw in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, len(data))
        data += raw + b"\0" * (-len(raw) % align)
    out += b"\0" * (-len(out) % align)
    return out + data


def q8_0(n):  # n elements, blocks of 32: f16 scale + 32 int8
    return (b"\x00\x3c" + bytes(range(32))) * (n // 32)


V, E, F = 16, 32, 64
vocab = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(V - 3)]
llama_kv = [
    ("general.architecture", T_STR, "llama"),
    ("general.name", T_STR, "seed"),
    ("llama.block_count", T_U32, 1),
    ("llama.context_length", T_U32, 128),
    ("llama.embedding_length", T_U32, E),
    ("llama.feed_forward_length", T_U32, F),
    ("llama.attention.head_count", T_U32, 2),
    ("llama.attention.head_count_kv", T_U32, 1),
    ("llama.attention.layer_norm_rms_epsilon", T_F32, 1e-5),
    ("llama.rope.dimension_count", T_U32, E // 2),
    ("general.file_type", T_U32, 0),
    ("tokenizer.ggml.model", T_STR, "llama"),
    ("tokenizer.ggml.tokens", T_ARR, (T_STR, vocab)),
    ("tokenizer.ggml.scores", T_ARR, (T_F32, [0.0] * V)),
    ("tokenizer.ggml.token_type", T_ARR, (T_I32, [2, 3, 3] + [1] * (V - 3))),
    ("tokenizer.ggml.bos_token_id", T_U32, 1),
]


def llama_tensors(ty):
    mat = (lambda n: f32(n)) if ty == 0 else q8_0
    return [
        ("token_embd.weight", [E, V], ty, mat(E * V)),
        ("blk.0.attn_norm.weight", [E], 0, f32(E)),
        ("blk.0.attn_q.weight", [E, E], ty, mat(E * E)),
        ("blk.0.attn_k.weight", [E, E // 2], ty, mat(E * E // 2)),
        ("blk.0.attn_v.weight", [E, E // 2], ty, mat(E * E // 2)),
        ("blk.0.attn_output.weight", [E, E], ty, mat(E * E)),
        ("blk.0.ffn_norm.weight", [E], 0, f32(E)),
        ("blk.0.ffn_gate.weight", [E, F], ty, mat(E * F)),
        ("blk.0.ffn_up.weight", [E, F], ty, mat(E * F)),
        ("blk.0.ffn_down.weight", [F, E], ty, mat(E * F)),
        ("output_norm.weight", [E], 0, f32(E)),
        ("output.weight", [E, V], ty, mat(E * V)),
    ]


put("gguf_reader", "llama_f32", gguf(llama_kv, llama_tensors(0)))
put("gguf_reader", "llama_q8_0", gguf(llama_kv + [("general.alignment", T_U32, 64)], llama_tensors(8), align=64))
put("gguf_reader", "arrays", gguf([("a", T_ARR, (T_ARR, [(T_U8, [1, 2]), (T_F64, [0.5])])), ("b", T_I64, -3),
                                   ("c", T_BOOL, True), ("d", T_U16, 7)], []))


# ---- imatrix ----
def legacy(entries, tail=True):
    b = struct.pack("<i", len(entries))
    for name, ncall, vals in entries:
        n = name.encode()
        b += struct.pack("<i", len(n)) + n + struct.pack("<ii", ncall, len(vals)) + struct.pack(f"<{len(vals)}f", *vals)
    if tail:
        ds = b"wiki.train.raw"
        b += struct.pack("<i", 10) + struct.pack("<i", len(ds)) + ds
    return b


put("imatrix", "legacy", legacy([("blk.0.attn_q.weight", 4, [1.0] * E), ("blk.0.ffn_down.weight", 4, [2.0] * F)]))
put("imatrix", "gguf", gguf([("general.type", T_STR, "imatrix"), ("imatrix.chunk_count", T_U32, 4)], [
    ("blk.0.attn_q.weight.in_sum2", [E, 1], 0, f32(E)),
    ("blk.0.attn_q.weight.counts", [1, 1], 0, struct.pack("<f", 4.0)),
]))


# ---- SentencePiece tokenizer.model (protobuf) ----
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 5:
        return key + struct.pack("<f", payload)
    return key + varint(len(payload)) + payload


def piece(text, score, kind):
    return field(1, 2, text.encode()) + field(2, 5, score) + field(3, 0, kind)


def spm(model_type, byte_fallback, pieces, add_dummy_prefix=1):
    b = b"".join(field(1, 2, piece(*p)) for p in pieces)
    b += field(2, 2, field(3, 0, model_type) + field(35, 0, byte_fallback))
    b += field(3, 2, field(1, 2, b"nmt_nfkc") + field(3, 0, add_dummy_prefix) + field(4, 0, 1))
    return b


base = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
put("spm_tokenizer", "unigram", spm(1, 0, base + [("\u2581a", -1.0, 1), ("b", -2.0, 1), ("\u2581ab", -0.5, 1)]))
put("spm_tokenizer", "bpe_bytes", spm(2, 1, base + [(f"<0x{i:02X}>", 0.0, 6) for i in range(8)]
                                      + [("\u2581the", -3.0, 1), ("<ctl>", 0.0, 4)], add_dummy_prefix=0))


# ---- tokenizer.json (+ 0xFF + tokenizer_config.json) ----
tiny = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 5, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True}],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120ab": 4},
              "merges": ["a b", "\u0120 ab"]},
}
tc = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "add_bos_token": False}
put("tokenizer_json", "tiny", json.dumps(tiny).encode())
put("tokenizer_json", "tiny_with_config", json.dumps(tiny).encode() + b"\xff" + json.dumps(tc).encode())
if len(sys.argv) > 1:
    d = sys.argv[1]
    tj = open(os.path.join(d, "tokenizer.json"), "rb").read()
    tcj = open(os.path.join(d, "tokenizer_config.json"), "rb").read()
    put("tokenizer_json", "fixture", tj + b"\xff" + tcj)
print("seeds written to", os.path.join(HERE, "corpus"))
