#!/usr/bin/env python3
"""Writes small Alpha-CLIP visual checkpoints and float64 reference outputs for the converter tests.

Run with a Python that has torch (Debian's python3-torch: /usr/bin/python3):
    /usr/bin/python3 tools/make-test-checkpoint.py test/fixtures/alpha-clip-w48

Config: width 48, 2 layers, 3 heads (head_dim 16), patch 8, resolution 64 (grid 8, 65 tokens),
output dim 24. The reference forward below is a plain re-statement of the Alpha-CLIP visual
encoder (conv1 + conv1_alpha, CLS, positions, ln_pre, pre-LN blocks with QuickGELU, ln_post, proj),
computed in float64 from the weights exactly as stored (after fp16/bf16 rounding).

Files (each checkpoint exercises a reader path):
  w48-views.pth            fp32; every tensor is a view into one flat storage at an offset, and
                           `proj` is a transposed (non-contiguous) view
  w48-fp16-module.pth      fp16; keys prefixed `module.`, nested under {"state_dict": ..., "epoch": 3}
  w48-bf16.pth             bf16 storages
  w48-mixed.safetensors    hand-written safetensors: the fp16 weights as F16, a few as F32
  other-keys.pth           a zip checkpoint with unrelated keys
  clip-text.pth            a tiny CLIP text-encoder state dict (not a visual encoder)
  reference.json           config, input recipe, and per-weight-set outputs (base64 float32)
"""
import base64
import json
import os
import struct
import sys

import numpy as np
import torch

WIDTH, LAYERS, HEADS, PATCH, RES, OUT_DIM = 48, 2, 3, 8, 64, 24
GRID = RES // PATCH
TOKENS = GRID * GRID + 1
ALPHA_FG, ALPHA_BG = 1.9231, -1.9231


def make_weights(seed=1234):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "class_embedding": r(WIDTH, scale=0.2),
        "positional_embedding": r(TOKENS, WIDTH, scale=0.1),
        "proj": r(WIDTH, OUT_DIM, scale=0.2),
        "conv1.weight": r(WIDTH, 3, PATCH, PATCH),
        "conv1_alpha.weight": r(WIDTH, 1, PATCH, PATCH),
        "ln_pre.weight": 1 + r(WIDTH, scale=0.1),
        "ln_pre.bias": r(WIDTH, scale=0.1),
    }
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = r(3 * WIDTH, WIDTH, scale=0.15)
        sd[p + "attn.in_proj_bias"] = r(3 * WIDTH, scale=0.05)
        sd[p + "attn.out_proj.weight"] = r(WIDTH, WIDTH, scale=0.15)
        sd[p + "attn.out_proj.bias"] = r(WIDTH, scale=0.05)
        sd[p + "ln_1.weight"] = 1 + r(WIDTH, scale=0.1)
        sd[p + "ln_1.bias"] = r(WIDTH, scale=0.1)
        sd[p + "mlp.c_fc.weight"] = r(4 * WIDTH, WIDTH, scale=0.15)
        sd[p + "mlp.c_fc.bias"] = r(4 * WIDTH, scale=0.05)
        sd[p + "mlp.c_proj.weight"] = r(WIDTH, 4 * WIDTH, scale=0.1)
        sd[p + "mlp.c_proj.bias"] = r(WIDTH, scale=0.05)
        sd[p + "ln_2.weight"] = 1 + r(WIDTH, scale=0.1)
        sd[p + "ln_2.bias"] = r(WIDTH, scale=0.1)
    sd["ln_post.weight"] = 1 + r(WIDTH, scale=0.1)
    sd["ln_post.bias"] = r(WIDTH, scale=0.1)
    return sd


# nn.MultiheadAttention stores in_proj as `in_proj_weight` / `in_proj_bias`; the released Alpha-CLIP
# checkpoints use a plain Linear `attn.in_proj.{weight,bias}` (docs/reference.md section 1).
def released_names(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace("attn.in_proj_weight", "attn.in_proj.weight").replace("attn.in_proj_bias", "attn.in_proj.bias")
        out[k] = v
    return out


def make_inputs():
    """Batch of 2, exactly reproducible in any language: an integer LCG per element, scaled by a
    power of two (exact), then rounded to float32. Alpha: image 0 has a triangle region, image 1
    is all foreground."""
    n = 2 * 3 * RES * RES
    idx = np.arange(n, dtype=np.int64)
    lcg = (idx * 1103515245 + 12345) % (2**31)
    image = (lcg.astype(np.float64) / 2**31 * 4 - 2).astype(np.float32).reshape(2, 3, RES, RES)
    y, x = np.mgrid[0:RES, 0:RES]
    alpha = np.empty((2, 1, RES, RES), dtype=np.float32)
    alpha[0, 0] = np.where(x + y < RES, ALPHA_FG, ALPHA_BG)
    alpha[1, 0] = ALPHA_FG
    return image, alpha


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w + b


def forward(sd, image, alpha, heads=HEADS):
    """Alpha-CLIP visual forward in float64. Returns (llava_features [B,G*G,W], image_embed [B,D])."""
    w = {k: v.to(torch.float64).numpy() for k, v in sd.items()}
    B = image.shape[0]
    img = image.astype(np.float64)
    al = alpha.astype(np.float64)

    def patchify(t):  # [B,C,R,R] -> [B, G*G, C*P*P] in (c, ky, kx) order, patches row-major
        C = t.shape[1]
        t = t.reshape(B, C, GRID, PATCH, GRID, PATCH).transpose(0, 2, 4, 1, 3, 5)
        return t.reshape(B, GRID * GRID, C * PATCH * PATCH)

    x = patchify(img) @ w["conv1.weight"].reshape(WIDTH, -1).T
    x = x + patchify(al) @ w["conv1_alpha.weight"].reshape(WIDTH, -1).T
    cls = np.broadcast_to(w["class_embedding"], (B, 1, WIDTH))
    x = np.concatenate([cls, x], axis=1) + w["positional_embedding"]
    x = layer_norm(x, w["ln_pre.weight"], w["ln_pre.bias"])
    hd = WIDTH // heads
    hidden = [x]
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.in_proj.weight"].T + w[p + "attn.in_proj.bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        split = lambda t: t.reshape(B, TOKENS, heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(q) * hd**-0.5, split(k), split(v)
        s = q @ k.transpose(0, 1, 3, 2)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        a = (s @ v).transpose(0, 2, 1, 3).reshape(B, TOKENS, WIDTH)
        x = x + a @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
        h = h * (1 / (1 + np.exp(-1.702 * h)))
        x = x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
        hidden.append(x)
    llava = hidden[LAYERS - 1][:, 1:, :]
    pooled = layer_norm(x[:, 0, :], w["ln_post.weight"], w["ln_post.bias"])
    return llava, pooled @ w["proj"]


def b64(a):
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def save_views(sd, path):
    """fp32 checkpoint whose tensors are views into one flat storage at offsets; `proj` is stored
    transposed in the storage and saved as a `.t()` view (non-contiguous)."""
    total = sum(v.numel() for v in sd.values()) + 7
    flat = torch.zeros(total)
    out, pos = {}, 7  # start at an offset so no tensor begins at element 0
    for k, v in sd.items():
        n = v.numel()
        if k == "proj":
            flat[pos : pos + n] = v.t().contiguous().flatten()
            out[k] = flat[pos : pos + n].view(OUT_DIM, WIDTH).t()
            assert not out[k].is_contiguous()
        else:
            flat[pos : pos + n] = v.flatten()
            out[k] = flat[pos : pos + n].view(v.shape)
        pos += n
    torch.save(out, path)


SAFETENSORS_DTYPE = {torch.float32: ("F32", "<f4"), torch.float16: ("F16", "<f2")}


def save_safetensors(tensors, path):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in tensors.items():
        name, np_dtype = SAFETENSORS_DTYPE[v.dtype]
        data = v.contiguous().numpy().astype(np_dtype).tobytes()
        header[k] = {"dtype": name, "shape": list(v.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    base = released_names(make_weights())
    image, alpha = make_inputs()

    fp16 = {k: v.half() for k, v in base.items()}
    bf16 = {k: v.bfloat16() for k, v in base.items()}
    save_views(base, os.path.join(out_dir, "w48-views.pth"))
    torch.save({"state_dict": {"module." + k: v for k, v in fp16.items()}, "epoch": 3},
               os.path.join(out_dir, "w48-fp16-module.pth"))
    torch.save(bf16, os.path.join(out_dir, "w48-bf16.pth"))
    # Same values as the fp16 checkpoint: F16, except the small 1-D tensors widened (exactly) to F32.
    save_safetensors({k: (v.float() if v.dim() == 1 else v) for k, v in fp16.items()},
                     os.path.join(out_dir, "w48-mixed.safetensors"))
    torch.save({"encoder.weight": torch.zeros(4, 4), "encoder.bias": torch.zeros(4)},
               os.path.join(out_dir, "other-keys.pth"))
    text = {"positional_embedding": torch.zeros(77, 8), "token_embedding.weight": torch.zeros(16, 8),
            "text_projection": torch.zeros(8, 4), "ln_final.weight": torch.ones(8), "ln_final.bias": torch.zeros(8),
            "transformer.resblocks.0.attn.in_proj.weight": torch.zeros(24, 8)}
    torch.save(text, os.path.join(out_dir, "clip-text.pth"))

    outputs = {}
    for name, weights in [("fp32", base), ("fp16", fp16), ("bf16", bf16)]:
        f = {k: v.float() for k, v in weights.items()}
        llava, embed = forward(f, image, alpha)
        outputs[name] = {"llava_features": b64(llava), "image_embed": b64(embed)}
    no_alpha = {k: (torch.zeros_like(v) if k == "conv1_alpha.weight" else v) for k, v in base.items()}
    llava, embed = forward(no_alpha, image, alpha)
    outputs["fp32_zero_alpha_conv"] = {"llava_features": b64(llava), "image_embed": b64(embed)}

    ref = {
        "generator": "tools/make-test-checkpoint.py",
        "torch": torch.__version__,
        "config": {"width": WIDTH, "layers": LAYERS, "heads": HEADS, "patchSize": PATCH, "imageSize": RES,
                   "gridSize": GRID, "outputDim": OUT_DIM},
        "inputs": {
            "batch": 2,
            "image": "float32 [2,3,64,64]: element i = f32(((i*1103515245+12345) mod 2^31) / 2^31 * 4 - 2)",
            "alpha": "float32 [2,1,64,64]: image 0: 1.9231 where x+y<64 else -1.9231; image 1: all 1.9231",
        },
        "outputs_shapes": {"llava_features": [2, GRID * GRID, WIDTH], "image_embed": [2, OUT_DIM]},
        "weight_sets": {
            "fp32": "w48-views.pth",
            "fp16": "w48-fp16-module.pth, w48-mixed.safetensors",
            "bf16": "w48-bf16.pth",
            "fp32_zero_alpha_conv": "w48-views.pth with conv1_alpha.weight zeroed (plain CLIP)",
        },
        "outputs": outputs,
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/alpha-clip-w48")
