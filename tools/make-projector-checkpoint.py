#!/usr/bin/env python3
"""Writes a LLaVA-style PyTorch checkpoint holding the golden tiny projector, for the projector tests.

    /usr/bin/python3 tools/make-projector-checkpoint.py \
        test/fixtures/golden/llava-projector-tiny/tiny-mmproj-f16.gguf test/fixtures/llava-projector

Reads mm.0/mm.2 from the mmproj GGUF (a minimal GGUF v3 parse, F16/F32 only) and saves with torch.save:
  llava-projector-fp16.bin  {"model.mm_projector.{0,2}.{weight,bias}": fp16 weights / fp32 biases,
                             "model.norm.weight": unrelated tensor}  (like LLaVA's last shard)
"""
import os
import struct
import sys

import numpy as np
import torch

TYPES = {0: (np.float32, 4), 1: (np.float16, 2)}


def read_gguf_tensors(path, wanted):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode()
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            it, n = take("I"), take("Q")
            return [value(it) for _ in range(n)]
        return take(scalar[t])

    assert data[:4] == b"GGUF" and take("4s") and take("I") == 3
    n_tensors, n_kv = take("Q"), take("Q")
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        ne = [take("Q") for _ in range(take("I"))]
        infos.append((name, ne, take("I"), take("Q")))
    align = meta.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    out = {}
    for name, ne, t, off in infos:
        if name in wanted:
            dt, size = TYPES[t]
            count = int(np.prod(ne))
            arr = np.frombuffer(data, dtype=dt, count=count, offset=base + off)
            out[name] = arr.reshape(list(reversed(ne))).copy()
    return out


def main():
    src, out_dir = sys.argv[1], sys.argv[2]
    t = read_gguf_tensors(src, {"mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"})
    sd = {
        "model.norm.weight": torch.ones(16),
        "model.mm_projector.0.weight": torch.from_numpy(t["mm.0.weight"].astype(np.float16)),
        "model.mm_projector.0.bias": torch.from_numpy(t["mm.0.bias"].astype(np.float32)),
        "model.mm_projector.2.weight": torch.from_numpy(t["mm.2.weight"].astype(np.float16)),
        "model.mm_projector.2.bias": torch.from_numpy(t["mm.2.bias"].astype(np.float32)),
    }
    os.makedirs(out_dir, exist_ok=True)
    torch.save(sd, os.path.join(out_dir, "llava-projector-fp16.bin"))


if __name__ == "__main__":
    main()
