#!/usr/bin/env python3
"""Writes IQ3_XXS's and IQ3_S's grid tables as little-endian u32 data files, extracted from
ggml's own ggml-common.h (`iq3xxs_grid`, `iq3s_grid`).

    python3 extract_iq3.py PATH/TO/ggml/src/ggml-common.h

run in this folder. tests/kernels_match_ggml.rs checks the files against ggml's dequantizer.
"""
import re
import struct
import sys

TABLES = {"iq3xxs_grid": ("iq3xxs_grid.bin", 256), "iq3s_grid": ("iq3s_grid.bin", 512)}

text = open(sys.argv[1]).read()
for name, (out, count) in TABLES.items():
    m = re.search(r"GGML_TABLE_BEGIN\(uint32_t, %s, (\d+)\)(.*?)GGML_TABLE_END\(\)" % name, text, re.S)
    assert m and int(m.group(1)) == count, name
    values = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", m.group(2))]
    assert len(values) == count, (name, len(values))
    with open(out, "wb") as f:
        f.write(struct.pack("<%dI" % count, *values))
    print(out, count, "entries")
