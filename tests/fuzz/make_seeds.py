#!/usr/bin/env python3
"""Write the small seed corpus for fuzz_gguf into seeds/gguf/.

The files are built here from the GGUF layout (magic, u32 version, u64 tensor
count, u64 key count, key/values, tensor infos, padding to general.alignment,
tensor data), independently of engine/gguf.c, so a seed never inherits a
writer bug. Every seed is a valid file; each exercises a different part of
the reader. Rerun after changing this script: python3 make_seeds.py
"""
import os
import struct

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f",
          BOOL: "?", U64: "Q", I64: "q", F64: "d"}
# ggml type id -> (block elements, block bytes)
GEOMETRY = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 30: (1, 2)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def payload(t, v):
    if t == STR:
        return gstr(v)
    if t == ARR:
        elem, items = v
        out = struct.pack("<IQ", elem, len(items))
        return out + b"".join(payload(elem, x) for x in items)
    return struct.pack("<" + SCALAR[t], v)


def gguf(kvs, tensors, version=3, align=32):
    """kvs: [(key, type, value)]; tensors: [(name, ne, type)] laid out in order."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, t, v in kvs:
        out += gstr(key) + struct.pack("<I", t) + payload(t, v)
    offset, blobs = 0, []
    for i, (name, ne, ttype) in enumerate(tensors):
        elems, nbytes = GEOMETRY[ttype]
        size = ne[0] // elems * nbytes
        for d in ne[1:]:
            size *= d
        out += gstr(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
        out += struct.pack("<IQ", ttype, offset)
        blobs.append(bytes((i * 37 + j * 11) & 0xFF for j in range(size)))
        offset += size + (-size % align)
    if tensors:
        out += b"\0" * (-len(out) % align)
        for blob in blobs:
            out += blob + b"\0" * (-len(blob) % align)
    return out


SEEDS = {
    "empty-v3.gguf": gguf([], []),
    "every-scalar.gguf": gguf(
        [("u8", U8, 200), ("i8", I8, -5), ("u16", U16, 60000), ("i16", I16, -300),
         ("u32", U32, 4000000000), ("i32", I32, -7), ("f32", F32, 1.5),
         ("bool", BOOL, True), ("str", STR, "llama"), ("u64", U64, 2**63 + 1),
         ("i64", I64, -(2**40)), ("f64", F64, 2.5), ("empty", STR, "")],
        [("w", [8], 0)]),
    "arrays-aligned.gguf": gguf(
        [("general.alignment", U32, 64),
         ("tokens", ARR, (STR, ["<s>", "", "hi"])),
         ("scores", ARR, (F32, [0.0, -1.0, 2.0])),
         ("nested", ARR, (ARR, [(I32, [1, 2]), (U8, []), (ARR, [(STR, ["x"])])])),
         ("none", ARR, (U64, []))],
        [("blk.0.q", [64, 2], 2), ("blk.0.k", [32, 1], 8)], align=64),
    "v2-tensors.gguf": gguf(
        [("general.architecture", STR, "llama"), ("llama.block_count", U32, 1)],
        [("a", [4, 3, 2], 1), ("b", [2], 0), ("c", [32], 3)], version=2),
    "four-dims.gguf": gguf(
        [("k", BOOL, False)], [("t", [2, 1, 2, 1], 30)]),
}

if __name__ == "__main__":
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "gguf")
    os.makedirs(here, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(here, name), "wb") as f:
            f.write(data)
        print("%-22s %5d bytes" % (name, len(data)))
