"""Trains the miniature Alpha-CLIP + LLaVA-1.5 model on the shapes world (CPU, PyTorch 1.13).

  python3 tools/shapes/train.py texts            -> out/texts.json (then tokenize.ts -> out/tokens.json)
  python3 tools/shapes/train.py train [--stage1 N] [--stage2 N]   -> out/vision.pth, out/llava.safetensors
  python3 tools/shapes/train.py eval [--seed S] [--scenes N]      -> accuracy per question type

Architecture = the real system, smaller: Alpha-CLIP ViT (conv1 + conv1_alpha, pre-LN CLIP blocks,
QuickGELU), LLaVA features = hidden state after block L-1 without CLS, projector mlp2x_gelu (erf GELU),
LLaMA LM (RMSNorm, RoPE on adjacent pairs as llama.cpp's llama arch computes it, SwiGLU, tied output)
over the real 32000-token LLaMA vocabulary and the exact LLaVA-1.5 prompt. Everything is seeded and
single-threaded, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import world  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")

CONFIG = {
    "image_size": 112,
    "patch": 14,
    "vision_width": 192,
    "vision_layers": 4,
    "vision_heads": 3,
    "vision_output_dim": 128,
    "lm_dim": 256,
    "lm_layers": 4,
    "lm_heads": 4,
    "lm_ffn": 704,
    "vocab": 32000,
    "rms_eps": 1e-5,
    "rope_base": 10000.0,
    "context_length": 512,
}

PAD_FILL = (122, 116, 104)
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
ALPHA_ON = 1.9231

# ---------------------------------------------------------------------------------------------
# LLaVA-1.5 preprocessing (Pillow is the reference for the bicubic resize)


def _pad_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), PAD_FILL)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _normalise(img: Image.Image, size: int) -> np.ndarray:
    arr = np.asarray(_pad_square(img).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1)  # [3, R, R]


def preprocess_image(rgb: np.ndarray, size: int) -> np.ndarray:
    return _normalise(Image.fromarray(rgb, "RGB"), size).astype(np.float32)


def preprocess_mask(mask: np.ndarray | None, size: int) -> np.ndarray:
    """[1, R, R] alpha: the mask goes through the image's geometry; whole image = all +1.9231."""
    if mask is None:
        return np.full((1, size, size), ALPHA_ON, dtype=np.float32)
    m = np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    norm = _normalise(Image.fromarray(m, "RGB"), size)
    return np.where(norm.sum(axis=0) > 6, ALPHA_ON, -ALPHA_ON).astype(np.float32)[None]


# ---------------------------------------------------------------------------------------------
# Models


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ClipAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, w = x.shape
        hd = w // self.heads
        q, k, v = self.in_proj(x).split(w, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax((q * hd**-0.5) @ k.transpose(-1, -2), dim=-1)
        return self.out_proj((att @ v).transpose(1, 2).reshape(b, n, w))


class ClipMlp(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ClipBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = ClipAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = ClipMlp(width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ClipBlock(width, heads) for _ in range(layers)])


class AlphaClipVisual(nn.Module):
    """State dict keys are those of the released Alpha-CLIP visual checkpoints."""

    def __init__(self, c):
        super().__init__()
        w, p = c["vision_width"], c["patch"]
        grid = c["image_size"] // p
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, p, p, bias=False)
        self.conv1_alpha = nn.Conv2d(1, w, p, p, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=1e-5)
        self.transformer = Transformer(w, c["vision_layers"], c["vision_heads"])
        self.ln_post = nn.LayerNorm(w, eps=1e-5)
        self.proj = nn.Parameter(scale * torch.randn(w, c["vision_output_dim"]))

    def forward(self, image, alpha):
        """-> (llava_features [B, grid², W] = after block L-1 without CLS, image_embed [B, D])."""
        x = self.conv1(image) + self.conv1_alpha(alpha)
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        blocks = self.transformer.resblocks
        for blk in blocks[:-1]:
            x = blk(x)
        feats = x[:, 1:, :]
        x = blocks[-1](x)
        return feats, self.ln_post(x[:, 0, :]) @ self.proj


class Projector(nn.Module):
    """LLaVA-1.5 mlp2x_gelu: Linear, exact (erf) GELU, Linear."""

    def __init__(self, vision_width, lm_dim):
        super().__init__()
        self.fc0 = nn.Linear(vision_width, lm_dim)
        self.fc2 = nn.Linear(lm_dim, lm_dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc0(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_pairs(x, pos, base):
    """Rotate ADJACENT pairs (x[2i], x[2i+1]) by pos * base^(-2i/d), as llama.cpp's llama arch does."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = pos[:, None].float() * inv[None, :]  # [T, d/2]
    cos, sin = ang.cos(), ang.sin()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


class LlamaLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["lm_dim"], c["lm_ffn"]
        self.heads = c["lm_heads"]
        self.base = c["rope_base"]
        self.attn_norm = RMSNorm(d, c["rms_eps"])
        self.attn_q = nn.Linear(d, d, bias=False)
        self.attn_k = nn.Linear(d, d, bias=False)
        self.attn_v = nn.Linear(d, d, bias=False)
        self.attn_output = nn.Linear(d, d, bias=False)
        self.ffn_norm = RMSNorm(d, c["rms_eps"])
        self.ffn_gate = nn.Linear(d, f, bias=False)
        self.ffn_up = nn.Linear(d, f, bias=False)
        self.ffn_down = nn.Linear(f, d, bias=False)

    def forward(self, x, pos, past):
        """x [B, T, D] at positions pos [T]; past = (k, v) [B, H, P, hd] or None -> (x, (k, v))."""
        b, t, d = x.shape
        hd = d // self.heads
        h = self.attn_norm(x)
        q = self.attn_q(h).reshape(b, t, self.heads, hd).transpose(1, 2)
        k = self.attn_k(h).reshape(b, t, self.heads, hd).transpose(1, 2)
        v = self.attn_v(h).reshape(b, t, self.heads, hd).transpose(1, 2)
        q, k = rope_pairs(q, pos, self.base), rope_pairs(k, pos, self.base)
        if past is not None:
            k = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
        p = k.shape[2] - t
        scores = (q @ k.transpose(-1, -2)) * hd**-0.5
        causal = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(diagonal=p)
        scores = scores.masked_fill(~causal, float("-inf"))
        o = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn_output(o)
        h = self.ffn_norm(x)
        x = x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))
        return x, (k, v)


class LlamaLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.token_embd = nn.Embedding(c["vocab"], c["lm_dim"])
        nn.init.normal_(self.token_embd.weight, std=0.02)
        self.layers = nn.ModuleList([LlamaLayer(c) for _ in range(c["lm_layers"])])
        self.output_norm = RMSNorm(c["lm_dim"], c["rms_eps"])

    def forward(self, x, start, past=None):
        pos = torch.arange(start, start + x.shape[1], device=x.device)
        new_past = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, pos, None if past is None else past[i])
            new_past.append(kv)
        return x, new_past

    def logits(self, h):
        return self.output_norm(h) @ self.token_embd.weight.t()  # tied output


class AuxHeads(nn.Module):
    """Direct targets on the vision features (colour, shape, position of the region; object count)."""

    def __init__(self, c):
        super().__init__()
        self.cls = nn.Linear(c["vision_output_dim"], 6 + 4 + 9 + 3)
        self.patch = nn.Linear(c["vision_width"], 6 + 4 + 9 + 3)

    def loss(self, feats, embed, labels):
        total = 0.0
        for out in (self.cls(embed), self.patch(feats.mean(dim=1))):
            parts = out.split([6, 4, 9, 3], dim=-1)
            for logit, lab in zip(parts, labels):
                total = total + F.cross_entropy(logit, lab, ignore_index=-1)
        return total

    def accuracy(self, embed, labels):
        parts = self.cls(embed).split([6, 4, 9, 3], dim=-1)
        accs = []
        for logit, lab in zip(parts, labels):
            keep = lab >= 0
            accs.append(float((logit.argmax(-1)[keep] == lab[keep]).float().mean()) if keep.any() else float("nan"))
        return accs


# ---------------------------------------------------------------------------------------------
# Data

# Yes/no and counting are the hard ones (a first run with equal weights got them 60% / 82% right).
QTYPE_WEIGHTS = {
    "colour": 0.7, "shape": 0.7, "what": 0.7, "describe": 0.4,
    "is_shape": 2.0, "is_colour": 2.0, "where": 1.0, "count": 2.0,
}  # fmt: skip
YES_NO_WEIGHT = 4.0  # loss weight of the yes/no token: the one token that decides such an answer


def load_tokens():
    path = os.path.join(OUT, "tokens.json")
    if not os.path.exists(path):
        sys.exit(f"{path} missing: run `train.py texts` then `npx tsx tools/shapes/tokenize.ts ...` (see README)")
    with open(path) as f:
        return json.load(f)


def item_rng(seed: int, index: int) -> np.random.RandomState:
    return np.random.RandomState((seed * 1000003 + index * 7919 + 12345) % (2**32))


def make_item(rng: np.random.RandomState, scene_seed: int, index: int, size: int, qtype: str | None = None, weights=None):
    """One training/eval example: preprocessed image + alpha, question text, answer text, truth."""
    scene = world.generate_scene(scene_seed, index)
    image, masks = world.render_scene(scene)
    if qtype is None:
        weights = weights or QTYPE_WEIGHTS
        types = list(weights)
        w = np.array([weights[t] for t in types])
        qtype = types[rng.choice(len(types), p=w / w.sum())]
    k = rng.randint(len(scene.objects))
    obj = scene.objects[k]
    if qtype == "count":
        mask = None if rng.rand() < 0.75 else masks[k]
    else:
        mask = masks[k] if rng.rand() < 0.75 else world.box_mask(scene, obj)
    template = world.TEMPLATES[qtype][rng.randint(len(world.TEMPLATES[qtype]))]
    asked = None
    if qtype == "is_shape":
        asked = obj.shape if rng.rand() < 0.5 else world.SHAPES[rng.randint(4)]
        question = template.format(shape=asked)
    elif qtype == "is_colour":
        asked = obj.colour if rng.rand() < 0.5 else world.COLOUR_NAMES[rng.randint(6)]
        question = template.format(colour=asked)
    else:
        question = template
    answer = world.make_answer(qtype, obj, scene, asked)
    position = world.position_name(obj, scene.width, scene.height)
    truth = {"colour": obj.colour, "shape": obj.shape, "position": position,
             "count": len(scene.objects), "asked": asked}  # fmt: skip
    whole = mask is None
    labels = (
        -1 if whole else world.COLOUR_NAMES.index(obj.colour),
        -1 if whole else world.SHAPES.index(obj.shape),
        -1 if whole else world.POSITIONS.index(position),
        len(scene.objects) - 2,
    )
    return {
        "image": preprocess_image(image, size),
        "alpha": preprocess_mask(mask, size),
        "qtype": qtype,
        "question": question,
        "answer": answer,
        "truth": truth,
        "labels": labels,
    }


def stack_vision(items, device="cpu"):
    image = torch.from_numpy(np.stack([it["image"] for it in items])).to(device)
    alpha = torch.from_numpy(np.stack([it["alpha"] for it in items])).to(device)
    labels = [torch.tensor([it["labels"][j] for it in items], device=device) for j in range(4)]
    return image, alpha, labels


class Batches(torch.utils.data.IterableDataset):
    """Batch b holds scenes [first + b*size, first + (b+1)*size); worker w makes batches b = w mod W.
    DataLoader returns them in order, so the data depends only on the seeds, not on the workers."""

    def __init__(self, data_seed, scene_seed, first, size, count, image_size):
        self.args = (data_seed, scene_seed, first, size, count, image_size)

    def __iter__(self):
        data_seed, scene_seed, first, size, count, image_size = self.args
        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        for b in range(w, count, nw):
            items = []
            for i in range(first + b * size, first + (b + 1) * size):
                items.append(make_item(item_rng(data_seed, i), scene_seed, i, image_size))
            image, alpha, labels = stack_vision(items)
            yield {"image": image, "alpha": alpha, "labels": labels,
                   "qa": [(it["question"], it["answer"]) for it in items]}  # fmt: skip


def batches(args, first, size, count, image_size):
    ds = Batches(args.seed, args.scene_seed, first, size, count, image_size)
    if args.workers == 0:
        return iter(ds)
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=args.workers, prefetch_factor=4))


# ---------------------------------------------------------------------------------------------
# Training


def build(c):
    torch.manual_seed(c["seed"])
    return AlphaClipVisual(c), Projector(c["vision_width"], c["lm_dim"]), LlamaLM(c), AuxHeads(c)


def lm_loss(vision, projector, lm, toks, batch, prefix_ids, device):
    image, alpha = batch["image"].to(device), batch["alpha"].to(device)
    labels = [lab.to(device) for lab in batch["labels"]]
    feats, embed = vision(image, alpha)
    img_tokens = projector(feats)  # [B, G, D]
    b, g, _ = img_tokens.shape
    prefix = lm.token_embd(torch.tensor(prefix_ids, device=device))[None]
    _, past = lm(prefix, 0)  # the shared system prompt runs once per batch
    seqs, targets_at, targets, weights = [], [], [], []
    for question, answer in batch["qa"]:
        q = toks["questions"][question]
        a = toks["answers"][answer] + [toks["eos"]]
        # The verdict token: the first of "Yes, it is a star." (or the last word of a fact-first
        # answer such as "It is a star, so the answer is yes.", tried in a CPU fine-tune: no better).
        if answer.startswith(("Yes", "No")):
            verdict_at = 0
        elif answer.endswith((" yes.", " no.")):
            verdict_at = len(a) - 3  # before "." and </s>
        else:
            verdict_at = -1
        weights += [YES_NO_WEIGHT if j == verdict_at else 1.0 for j in range(len(a))]
        seqs.append(q + a[:-1])
        targets_at.append([g + len(q) - 1 + j for j in range(len(a))])
        targets.append(a)
    t = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (t - len(s)) for s in seqs], device=device)
    x = torch.cat([img_tokens, lm.token_embd(ids)], dim=1)
    h, _ = lm(x, len(prefix_ids), past)
    rows = torch.tensor([i for i, tl in enumerate(targets_at) for _ in tl], device=device)
    cols = torch.tensor([p for tl in targets_at for p in tl], device=device)
    logits = lm.logits(h[rows, cols])
    tgt = torch.tensor([tok for a in targets for tok in a], device=device)
    w = torch.tensor(weights, device=device)
    loss = (F.cross_entropy(logits, tgt, reduction="none") * w).sum() / w.sum()
    return loss, feats, embed, labels


def cosine_lr(step, total, peak, warmup=100):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train(args):
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    c = dict(CONFIG, seed=args.seed, stage1=args.stage1, stage2=args.stage2, batch1=args.batch1, batch2=args.batch2)
    toks = load_tokens()
    vision, projector, lm, aux = (m.to(device) for m in build(c))
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "train.log"), "a")

    def say(msg):
        line = f"[{time.time() - t0:7.1f}s] {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    say(f"config {json.dumps(c)} device {device} workers {args.workers}")
    # Stage 1: the vision tower alone on direct targets (colour, shape, position, count).
    opt = torch.optim.AdamW(list(vision.parameters()) + list(aux.parameters()), lr=1e-3, weight_decay=0.01)
    for step, batch in enumerate(batches(args, 0, args.batch1, args.stage1, c["image_size"])):
        image, alpha = batch["image"].to(device), batch["alpha"].to(device)
        labels = [lab.to(device) for lab in batch["labels"]]
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.stage1, 1e-3)
        feats, embed = vision(image, alpha)
        loss = aux.loss(feats, embed, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.stage1 - 1:
            accs = aux.accuracy(embed, labels)
            say(f"stage1 {step} loss {loss.item():.3f} colour/shape/pos/count acc " + " ".join(f"{a:.2f}" for a in accs))
    # Stage 2: projector + LM on the question/answer text, vision fine-tuned more gently.
    groups = [
        {"params": list(projector.parameters()) + list(lm.parameters()), "peak": args.lr2},
        {"params": list(vision.parameters()) + list(aux.parameters()), "peak": args.lr2 / 5},
    ]
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], weight_decay=0.0)
    first = args.stage1 * args.batch1
    for step, batch in enumerate(batches(args, first, args.batch2, args.stage2, c["image_size"])):
        for g, spec in zip(opt.param_groups, groups):
            g["lr"] = cosine_lr(step, args.stage2, spec["peak"])
        loss, feats, embed, labels = lm_loss(vision, projector, lm, toks, batch, toks["prefix"], device)
        aux_loss = aux.loss(feats, embed, labels)
        opt.zero_grad()
        (loss + 0.2 * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(list(vision.parameters()) + list(projector.parameters()) + list(lm.parameters()), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.stage2 - 1:
            say(f"stage2 {step} lm loss {loss.item():.4f} aux {aux_loss.item():.3f}")
        if (step + 1) % 1000 == 0 or step == args.stage2 - 1:
            save(c, vision, projector, lm, args.out)
        if args.max_minutes and time.time() - t0 > 60 * args.max_minutes:
            say(f"stopping at stage2 step {step}: --max-minutes reached")
            save(c, vision, projector, lm, args.out)
            break
    say(f"done in {time.time() - t0:.0f}s")


# Fine-tuning on yes/no questions (CPU): the device run left "Is it a <x>?" at "always yes".
FINETUNE_WEIGHTS = {
    "colour": 0.25, "shape": 0.25, "what": 0.25, "describe": 0.1,
    "is_shape": 1.5, "is_colour": 1.5, "where": 0.3, "count": 0.4,
}  # fmt: skip


def finetune(args):
    torch.set_num_threads(args.threads)
    c, vision, projector, lm = load_trained(args.src)
    c = dict(c, finetune={"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed})
    for p in vision.parameters():
        p.requires_grad_(False)
    toks = load_tokens()
    params = list(projector.parameters()) + list(lm.parameters())
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    t0 = time.time()
    first = 10_000_000  # scenes no earlier stage used
    for step in range(args.steps):
        items = []
        for i in range(first + step * args.batch, first + (step + 1) * args.batch):
            items.append(make_item(item_rng(args.seed, i), args.scene_seed, i, c["image_size"], weights=FINETUNE_WEIGHTS))
        image, alpha, labels = stack_vision(items)
        batch = {"image": image, "alpha": alpha, "labels": labels, "qa": [(it["question"], it["answer"]) for it in items]}
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=20)
        loss, _, _, _ = lm_loss(vision, projector, lm, toks, batch, toks["prefix"], "cpu")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"[{time.time() - t0:7.1f}s] finetune {step} loss {loss.item():.4f}", flush=True)
        if (step + 1) % args.save_every == 0 or step == args.steps - 1:
            save(c, vision, projector, lm, args.out)
    print(f"done in {time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------
# Saving: vision as a torch.save state dict (released Alpha-CLIP key names), projector + LM as a
# hand-written safetensors file with GGUF-style names ([out, in] row-major weights).


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        half = t.dtype == torch.float16
        data = t.detach().cpu().to(torch.float16 if half else torch.float32).contiguous().numpy().tobytes()
        dtype = "F16" if half else "F32"
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def save(c, vision, projector, lm, out=OUT):
    os.makedirs(out, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in vision.state_dict().items()}, os.path.join(out, "vision.pth"))
    # The GGUF stores token_embd in F16: round it now so that evaluation sees the shipped values.
    with torch.no_grad():
        lm.token_embd.weight.copy_(lm.token_embd.weight.half().float())
    write_safetensors(os.path.join(out, "token_embd.safetensors"), {"token_embd.weight": lm.token_embd.weight.half()}, {})
    tensors = {
        "mm.0.weight": projector.fc0.weight, "mm.0.bias": projector.fc0.bias,
        "mm.2.weight": projector.fc2.weight, "mm.2.bias": projector.fc2.bias,
        "output_norm.weight": lm.output_norm.weight,
    }  # fmt: skip
    for i, layer in enumerate(lm.layers):
        for name in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]:
            tensors[f"blk.{i}.{name}.weight"] = getattr(layer, name).weight
    write_safetensors(os.path.join(out, "llava.safetensors"), tensors, {"config": json.dumps(c)})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        b, e = spec["data_offsets"]
        dt = np.float16 if spec["dtype"] == "F16" else np.float32
        out[name] = torch.from_numpy(np.frombuffer(data[b:e], dtype=dt).astype(np.float32)).reshape(spec["shape"])
    return out, header.get("__metadata__", {})


def load_trained(out=OUT):
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    vision, projector, lm, _ = build(c)
    vision.load_state_dict(torch.load(os.path.join(out, "vision.pth")))
    t, _ = read_safetensors(os.path.join(out, "llava.safetensors"))
    t.update(read_safetensors(os.path.join(out, "token_embd.safetensors"))[0])
    projector.fc0.weight.data, projector.fc0.bias.data = t["mm.0.weight"], t["mm.0.bias"]
    projector.fc2.weight.data, projector.fc2.bias.data = t["mm.2.weight"], t["mm.2.bias"]
    lm.token_embd.weight.data, lm.output_norm.weight.data = t["token_embd.weight"], t["output_norm.weight"]
    for i, layer in enumerate(lm.layers):
        for name in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]:
            getattr(layer, name).weight.data = t[f"blk.{i}.{name}.weight"]
    return c, vision, projector, lm


# ---------------------------------------------------------------------------------------------
# Evaluation: greedy decoding with the PyTorch forward (KV cache), decoded with the GGUF vocabulary.


def read_gguf_tokens(path):
    """Just enough of GGUF to read `tokenizer.ggml.tokens`."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = buf[pos : pos + n].decode("utf-8")
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

    assert buf[:4] == b"GGUF"
    pos = 4
    take("I")
    take("Q")
    kv = take("Q")
    for _ in range(kv):
        key = string()
        v = value(take("I"))
        if key == "tokenizer.ggml.tokens":
            return v
    raise ValueError("no tokenizer.ggml.tokens")


def decode(pieces, ids):
    out = bytearray()
    for i in ids:
        p = pieces[i]
        if p.startswith("<0x") and p.endswith(">") and len(p) == 6:
            out.append(int(p[3:5], 16))
        else:
            out += p.replace("\u2581", " ").encode()
    return out.decode("utf-8", errors="replace").strip()


@torch.no_grad()
def generate(vision, projector, lm, toks, items, device, max_new=16):
    """Greedy answers for items whose questions have the same token length (one batch)."""
    image, alpha, _ = stack_vision(items, device)
    feats, _ = vision(image, alpha)
    return greedy_answers(lm, toks, projector(feats), [toks["questions"][it["question"]] for it in items], max_new)


@torch.no_grad()
def greedy_answers(lm, toks, img_tokens, q_ids, max_new=16):
    """Greedy answer token ids for image tokens [B, G, D] and B question id lists of one length."""
    device = img_tokens.device
    prefix_ids = toks["prefix"]
    _, past = lm(lm.token_embd(torch.tensor(prefix_ids, device=device))[None], 0)
    x = torch.cat([img_tokens, lm.token_embd(torch.tensor(q_ids, device=device))], dim=1)
    b = img_tokens.shape[0]
    past = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in past]
    h, past = lm(x, len(prefix_ids), past)
    pos = len(prefix_ids) + x.shape[1]
    out = [[] for _ in range(b)]
    done = [False] * b
    nxt = lm.logits(h[:, -1]).argmax(-1)
    for _ in range(max_new):
        for i in range(b):
            if not done[i]:
                if int(nxt[i]) == toks["eos"]:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
        if all(done):
            break
        h, past = lm(lm.token_embd(nxt[:, None]), pos, past)
        pos += 1
        nxt = lm.logits(h[:, -1]).argmax(-1)
    return out


def load_pieces():
    path = os.path.join(OUT, "pieces.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return read_gguf_tokens(os.path.join(HERE, "../../test/fixtures/golden/ggml-vocab-llama-spm.gguf"))


def evaluate(args):
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    c, vision, projector, lm = (m.to(device) if isinstance(m, nn.Module) else m for m in load_trained(args.out))
    toks = load_tokens()
    pieces = load_pieces()
    rng = np.random.RandomState(args.seed)
    items = []
    types = args.types.split(",") if args.types else world.QUESTION_TYPES
    for i in range(args.scenes):
        for qtype in types:
            items.append(make_item(rng, args.seed, i, c["image_size"], qtype))
        if args.whole_colour:
            it = make_item(rng, args.seed, i, c["image_size"], "colour")
            it["alpha"] = preprocess_mask(None, c["image_size"])
            it["qtype"] = "colour_whole"
            items.append(it)
    groups: dict[int, list] = {}
    for it in items:
        groups.setdefault(len(toks["questions"][it["question"]]), []).append(it)
    right: dict[str, list[int]] = {}
    shown = 0
    t0 = time.time()
    for group in groups.values():
        for s in range(0, len(group), 64):
            batch = group[s : s + 64]
            for it, ids in zip(batch, generate(vision, projector, lm, toks, batch, device)):
                text = decode(pieces, ids)
                qt = it["qtype"]
                ok = world.check_answer("colour" if qt == "colour_whole" else qt, text, it["truth"])
                right.setdefault(qt, [0, 0])
                right[qt][0] += int(ok)
                right[qt][1] += 1
                if not ok and shown < args.show_errors:
                    shown += 1
                    print(f"  wrong: {it['question']!r} -> {text!r} (truth {it['truth']})")
    print(f"seed {args.seed}, {args.scenes} scenes, {time.time() - t0:.0f}s")
    for qt, (r, n) in right.items():
        print(f"  {qt:13s} {100 * r / n:6.1f}%  ({r}/{n})")
    with open(os.path.join(args.out, f"eval-{args.seed}.json"), "w") as f:
        json.dump({qt: {"right": r, "total": n} for qt, (r, n) in right.items()}, f, indent=1)


def dump_texts(_args):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "pieces.json"), "w") as f:
        json.dump(read_gguf_tokens(os.path.join(HERE, "../../test/fixtures/golden/ggml-vocab-llama-spm.gguf")), f)
    q, a = world.all_texts()
    with open(os.path.join(OUT, "texts.json"), "w") as f:
        json.dump({"questions": q, "answers": a}, f, indent=1)
    print(f"wrote {OUT}/texts.json: {len(q)} questions, {len(a)} answers")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("texts")
    tr = sub.add_parser("train")
    tr.add_argument("--seed", type=int, default=7)
    tr.add_argument("--scene-seed", type=int, default=1)
    tr.add_argument("--stage1", type=int, default=1500)
    tr.add_argument("--stage2", type=int, default=3000)
    tr.add_argument("--batch1", type=int, default=128)
    tr.add_argument("--batch2", type=int, default=64)
    tr.add_argument("--lr2", type=float, default=1e-3)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--workers", type=int, default=0, help="data worker processes (0 = in the main process)")
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--out", default=OUT)
    tr.add_argument("--max-minutes", type=float, default=0, help="stop stage 2 early and save (safety)")
    ft = sub.add_parser("finetune")
    ft.add_argument("--src", required=True)
    ft.add_argument("--out", required=True)
    ft.add_argument("--seed", type=int, default=8)
    ft.add_argument("--scene-seed", type=int, default=1)
    ft.add_argument("--steps", type=int, default=400)
    ft.add_argument("--batch", type=int, default=32)
    ft.add_argument("--lr", type=float, default=5e-4)
    ft.add_argument("--threads", type=int, default=1)
    ft.add_argument("--save-every", type=int, default=25)
    ev = sub.add_parser("eval")
    ev.add_argument("--seed", type=int, default=1000)
    ev.add_argument("--scenes", type=int, default=300)
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default=OUT)
    ev.add_argument("--show-errors", type=int, default=10)
    ev.add_argument("--whole-colour", action="store_true")
    ev.add_argument("--types", default="", help="comma-separated question types (default: all)")
    args = ap.parse_args()
    {"texts": dump_texts, "train": train, "finetune": finetune, "eval": evaluate}[args.cmd](args)


if __name__ == "__main__":
    main()
