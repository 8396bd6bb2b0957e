#!/usr/bin/env python3
"""Compares two GGUF imatrix files (llama-imatrix's and kiln's): keys, tensor set, counts, and
the relative L2 difference of each tensor's sums. Exit 1 when they disagree beyond 1e-3.
Pure Python (no numpy): reads GGUF v3 with f32 tensors only."""
import math
import struct
import sys


def read_gguf(path):
    b = open(path, "rb").read()
    p = 0

    def take(fmt):
        nonlocal p
        v = struct.unpack_from("<" + fmt, b, p)
        p += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal p
        n = take("Q")
        s = b[p:p + n].decode("utf-8")
        p += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    assert b[:4] == b"GGUF", path
    p = 4
    take("I")
    n_t, n_kv = take("Q"), take("Q")
    kv = {}
    for _ in range(n_kv):
        k = string()
        kv[k] = value(take("I"))
    infos = []
    for _ in range(n_t):
        name = string()
        nd = take("I")
        dims = [take("Q") for _ in range(nd)]
        ty, off = take("I"), take("Q")
        infos.append((name, dims, ty, off))
    align = kv.get("general.alignment", 32)
    base = (p + align - 1) // align * align
    tensors = {}
    for name, dims, ty, off in infos:
        assert ty == 0, f"{path}: {name} is not f32"
        n = math.prod(dims)
        tensors[name] = (dims, struct.unpack_from(f"<{n}f", b, base + off))
    return kv, tensors


def main():
    (ka, ta), (kb, tb) = read_gguf(sys.argv[1]), read_gguf(sys.argv[2])
    ok = True
    for k in ("general.type", "imatrix.chunk_count", "imatrix.chunk_size"):
        same = ka.get(k) == kb.get(k)
        ok &= same
        print(f"{k}: {ka.get(k)} / {kb.get(k)}{'' if same else '  DIFFERENT'}")
    if set(ta) != set(tb):
        ok = False
        print("tensors only in the first:", sorted(set(ta) - set(tb)))
        print("tensors only in the second:", sorted(set(tb) - set(ta)))
    worst = (0.0, "")
    for name in sorted(set(ta) & set(tb)):
        (da, va), (db, vb) = ta[name], tb[name]
        if da != db:
            ok = False
            print(f"{name}: shape {da} vs {db}")
            continue
        if name.endswith(".counts"):
            if va != vb:
                ok = False
                print(f"{name}: counts {va[:4]} vs {vb[:4]}")
            continue
        num = math.sqrt(sum((x - y) ** 2 for x, y in zip(va, vb)))
        den = math.sqrt(sum(x * x for x in va)) or 1.0
        worst = max(worst, (num / den, name))
    print(f"{len(ta) // 2} weights; worst relative L2 of the sums: {worst[0]:.2e} ({worst[1]})")
    ok &= worst[0] < 1e-3
    print("AGREE" if ok else "DISAGREE")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
