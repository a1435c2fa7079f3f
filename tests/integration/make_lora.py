#!/usr/bin/env python3
"""Write a random LoRA adapter GGUF for a Llama model (test data for
test_lora_cli.sh): general.type=adapter, adapter.type=lora, alpha, and
<weight>.lora_a [n_in, rank] / <weight>.lora_b [rank, n_out] F32 tensors.
usage: make_lora.py OUT N_EMBD N_LAYER RANK SEED [ARCH]"""
import random
import struct
import sys

out, n_embd, n_layer, rank, seed = sys.argv[1], *map(int, sys.argv[2:6])
arch = sys.argv[6] if len(sys.argv) > 6 else "llama"
rng = random.Random(seed)


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


kv = [("general.architecture", 8, s(arch)), ("general.type", 8, s("adapter")),
      ("adapter.type", 8, s("lora")), ("adapter.lora.alpha", 6, struct.pack("<f", 2.0 * rank))]
tensors = []
for layer in range(n_layer):
    base = f"blk.{layer}.attn_q.weight"
    tensors.append((base + ".lora_a", (n_embd, rank)))
    tensors.append((base + ".lora_b", (rank, n_embd)))
head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
for k, t, v in kv:
    head += s(k) + struct.pack("<I", t) + v
offset, datas = 0, []
for name, (ne0, ne1) in tensors:
    head += s(name) + struct.pack("<I", 2) + struct.pack("<QQ", ne0, ne1)
    head += struct.pack("<IQ", 0, offset)
    data = struct.pack(f"<{ne0 * ne1}f", *(rng.uniform(-0.5, 0.5) for _ in range(ne0 * ne1)))
    datas.append(data + b"\0" * (-len(data) % 32))
    offset += len(datas[-1])
head += b"\0" * (-len(head) % 32)
with open(out, "wb") as f:
    f.write(head + b"".join(datas))
