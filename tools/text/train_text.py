"""Trains the bundled text tower: a small CLIP text transformer (OpenAI's layout and key names) whose
features match the frozen bundled Alpha-CLIP's region embeddings (`image_embed`), contrastively.

  npx tsx tools/text/dump-region-embeds.ts tools/text/out/embeds-seed21 21 3000      # training regions
  npx tsx tools/text/dump-region-embeds.ts tools/text/out/embeds-seed5000 5000 300   # held out
  npx tsx tools/text/tokenize-texts.ts tools/text/out/texts.json                       # CLIP BPE ids
  /usr/bin/python3 tools/text/train_text.py --out tools/text/out/run1
  npx region-vqa convert-text --checkpoint tools/text/out/run1/text.pt --out models/shapes/text

The vision tower is not touched (its embeddings are precomputed), so the LLaVA path cannot change.
Loss: for a batch of regions, the 24 colour-shape labels are written with one random template each
step, and each region's label is picked by softmax(100 x cosine) - Alpha-CLIP's zero-shot rule.
Forward (docs/reference.md section 6.3): token + positional embedding, pre-LN blocks with causal
attention (in_proj Q, K, V), QuickGELU MLP, ln_final, the row at argmax(ids) (the first EOT) @
text_projection. Writes text.pt: a torch.save state dict with OpenAI's text key names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTH, LAYERS, HEADS, CONTEXT, VOCAB = 64, 2, 1, 77, 49408


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, HEADS)  # keys: in_proj_weight/bias, out_proj
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(WIDTH, 4 * WIDTH))
        self.mlp.add_module("c_proj", nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x [L, N, W]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))


class TextTower(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[Block() for _ in range(LAYERS)])
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(torch.randn(WIDTH, embed_dim) * WIDTH**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)), requires_grad=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
        self.register_buffer("causal", mask, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [N, 77] -> [N, D]
        x = self.token_embedding(ids) + self.positional_embedding
        x = x.permute(1, 0, 2)
        for block in self.transformer.resblocks:
            x = block(x, self.causal)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


def load_regions(folder: str):
    meta = json.load(open(os.path.join(folder, "regions.json")))
    emb = np.fromfile(os.path.join(folder, "embeds.f32"), dtype=np.float32).reshape(-1, meta["dim"])
    return torch.from_numpy(emb), meta["regions"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="tools/text/out/embeds-seed21")
    ap.add_argument("--held-out", default="tools/text/out/embeds-seed5000")
    ap.add_argument("--texts", default="tools/text/out/texts.json")
    ap.add_argument("--out", default="tools/text/out/run1")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(7)
    torch.set_num_threads(args.threads)
    texts = json.load(open(args.texts))  # {labels: [...], templates: [...], ids: {template: [[77 ids] per label]}}
    labels = texts["labels"]
    templates = texts["templates"]
    ids = {t: torch.tensor(texts["ids"][t], dtype=torch.int64) for t in templates}
    train_x, train_r = load_regions(args.train)
    held_x, held_r = load_regions(args.held_out)
    index = {label: i for i, label in enumerate(labels)}
    train_y = torch.tensor([index[f"{r['colour']} {r['shape']}"] for r in train_r])
    held_y = torch.tensor([index[f"{r['colour']} {r['shape']}"] for r in held_r])
    train_x = F.normalize(train_x, dim=-1)
    held_x = F.normalize(held_x, dim=-1)
    model = TextTower(train_x.shape[1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(11)
    t0 = time.time()

    def accuracy(template: str) -> float:
        with torch.no_grad():
            t = F.normalize(model(ids[template]), dim=-1)
            return ((held_x @ t.T).argmax(1) == held_y).float().mean().item()

    for step in range(args.steps):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.randint(len(train_x), (args.batch,), generator=gen)
        template = templates[int(torch.randint(len(templates), (1,), generator=gen))]
        t = F.normalize(model(ids[template]), dim=-1)
        logits = 100.0 * train_x[pick] @ t.T
        loss = F.cross_entropy(logits, train_y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} held-out top-1 ({templates[0]!r}) {accuracy(templates[0]):.4f} {time.time() - t0:.0f}s", flush=True)
    for template in templates:
        print(f"held-out top-1 with {template!r}: {accuracy(template):.4f}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(args.out, "text.pt"))
    json.dump({"width": WIDTH, "layers": LAYERS, "heads": HEADS, "embed_dim": train_x.shape[1], "steps": args.steps}, open(os.path.join(args.out, "config.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
