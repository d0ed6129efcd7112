"""Trains the miniature shapes-world segmenter (tools/segmenter/model.py) on the CPU.

  python3 tools/segmenter/train.py train --out tools/segmenter/out/run1 [--steps N] [--batch B]
  python3 tools/segmenter/train.py eval --out tools/segmenter/out/run1 [--scenes N] [--seed S]

Fresh scenes every step (scene seed 11; evaluation uses other seeds), prompts drawn as the evaluation
draws them (one click at a random interior pixel, two clicks, a click plus an exclude click, a box, a box
plus a click) and a few clicks on the background, whose target is the empty mask. Preprocessing is
SAM 2.1's: Pillow BILINEAR resize to 256 x 256 (aspect ratio ignored), ImageNet mean and std. Loss: for
each example the best of the 3 masks (BCE + Dice against the object mask resized to 256 x 256 the
same way), plus 0.1 x the mean of all three, IoU-score regression (MSE to each mask's real IoU) and
the object score (BCE: is there an object?). Writes out/segmenter.pth (torch.save state dict) and
out/config.json; `npx tsx tools/segmenter/export.ts` turns them into models/shapes/segmenter/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "shapes"))
import world  # noqa: E402
from model import CONFIG, MEAN, STD, MiniSegmenter  # noqa: E402

TRAIN_SEED = 11
S = CONFIG["image_size"]


def preprocess(rgb: np.ndarray) -> np.ndarray:
    img = Image.fromarray(rgb, "RGB").resize((S, S), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return x.transpose(2, 0, 1)


def resize_mask(mask: np.ndarray) -> np.ndarray:
    img = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((S, S), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def random_inside(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])


def make_prompt(rng: np.random.Generator, scene, masks, k: int, kind: str):
    """(points [(x, y, label)], box or None, target mask) in image pixels."""
    obj = scene.objects[k]
    m = masks[k]
    if kind == "background":
        union = np.zeros_like(m)
        for mm in masks:
            union |= mm
        return [(*random_inside(rng, ~union), 1)], None, np.zeros_like(m)
    if kind == "click":
        return [(*random_inside(rng, m), 1)], None, m
    if kind == "two":
        return [(*random_inside(rng, m), 1), (*random_inside(rng, m), 1)], None, m
    if kind == "exclude":
        others = [j for j in range(len(masks)) if j != k]
        j = others[rng.integers(len(others))]
        return [(*random_inside(rng, m), 1), (*random_inside(rng, masks[j]), 0)], None, m
    x1, y1, x2, y2 = obj.box
    if kind in ("box", "box+click"):
        jitter = rng.integers(-1, 6, size=4)
        box = (
            max(0, x1 - jitter[0]),
            max(0, y1 - jitter[1]),
            min(scene.width, x2 + jitter[2]),
            min(scene.height, y2 + jitter[3]),
        )
        pts = [(*random_inside(rng, m), 1)] if kind == "box+click" else []
        return pts, box, m
    raise ValueError(kind)


KINDS = ["click", "two", "exclude", "box", "box+click", "background"]
KIND_P = [0.42, 0.13, 0.1, 0.15, 0.1, 0.1]


def to_frame(points, box, width: int, height: int):
    """Image pixels -> the resized 256 x 256 frame, as SAM 2.1's processor scales them."""
    sx, sy = S / width, S / height
    pts = [(x * sx, y * sy, lab) for x, y, lab in points]
    b = None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return pts, b


def batch(step: int, size: int, seed: int = TRAIN_SEED):
    rng = np.random.default_rng([seed, step])
    xs, targets, pts, labs, boxes, has_box, has_obj = [], [], [], [], [], [], []
    n_max = 2
    for b in range(size):
        scene = world.generate_scene(seed, step * size + b)
        rgb, masks = world.render_scene(scene)
        kind = KINDS[rng.choice(len(KINDS), p=KIND_P)]
        if kind == "exclude" and len(masks) < 2:
            kind = "click"
        points, box, target = make_prompt(rng, scene, masks, int(rng.integers(len(masks))), kind)
        points, box = to_frame(points, box, scene.width, scene.height)
        xs.append(preprocess(rgb))
        targets.append(resize_mask(target))
        p = [(x, y) for x, y, _ in points] + [(0.0, 0.0)] * (n_max - len(points))
        lab = [lab for _, _, lab in points] + [-10] * (n_max - len(points))
        pts.append(p)
        labs.append(lab)
        boxes.append(box if box is not None else (0.0, 0.0, 0.0, 0.0))
        has_box.append(box is not None)
        has_obj.append(kind != "background")
    return (
        torch.from_numpy(np.stack(xs)),
        torch.from_numpy(np.stack(targets)).unsqueeze(1),
        torch.tensor(pts, dtype=torch.float32),
        torch.tensor(labs, dtype=torch.int64),
        torch.tensor(boxes, dtype=torch.float32).unsqueeze(1),
        torch.tensor(has_box, dtype=torch.float32),
        torch.tensor(has_obj, dtype=torch.float32),
    )


def losses(model, data):
    x, target, pts, labs, boxes, has_box, has_obj = data
    e0, e1, e2 = model.encoder(x)
    iou_pred, masks, obj_logit = model.decoder(e0, e1, e2, pts, labs, boxes, has_box.view(-1, 1, 1, 1))
    up = F.interpolate(masks, size=(S, S), mode="bilinear", align_corners=False)  # [B, 3, S, S]
    t = target.expand_as(up)
    bce = F.binary_cross_entropy_with_logits(up, t, reduction="none").mean((2, 3))
    p = torch.sigmoid(up)
    inter = (p * t).sum((2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    per_mask = bce + dice  # [B, 3]
    seg = per_mask.min(1).values.mean() + 0.1 * per_mask.mean()
    with torch.no_grad():
        hard = (up > 0).float()
        tb = (t > 0.5).float()
        i = (hard * tb).sum((2, 3))
        u = ((hard + tb) > 0).float().sum((2, 3))
        real_iou = torch.where(u > 0, i / u.clamp(min=1), torch.ones_like(u))
    iou_loss = F.mse_loss(iou_pred, real_iou)
    obj_loss = F.binary_cross_entropy_with_logits(obj_logit.squeeze(1), has_obj)
    best = real_iou.gather(1, per_mask.argmin(1, keepdim=True)).squeeze(1)
    return seg + iou_loss + 0.2 * obj_loss, {
        "seg": seg.item(),
        "iou_mse": iou_loss.item(),
        "obj": obj_loss.item(),
        "best_iou": best[has_obj > 0].mean().item(),
    }


def train(args) -> None:
    torch.manual_seed(7)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    model = MiniSegmenter()
    if args.resume:
        model.load_state_dict(torch.load(args.resume))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}", flush=True)
    t0 = time.time()
    for step in range(args.steps):
        warm = args.warmup
        cosine = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        lr = cosine if step >= warm else args.lr * step / warm
        for g in opt.param_groups:
            g["lr"] = lr
        loss, parts = losses(model, batch(step + args.step_offset, args.batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(
                f"step {step} loss {loss.item():.4f} "
                + " ".join(f"{k} {v:.4f}" for k, v in parts.items())
                + f" lr {lr:.2e} {time.time() - t0:.0f}s",
                flush=True,
            )
        if (step + 1) % 250 == 0 or step == args.steps - 1:
            torch.save(model.state_dict(), os.path.join(args.out, "segmenter.pth"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({**CONFIG, "mean": MEAN, "std": STD, "steps": args.steps, "batch": args.batch}, f, indent=2)


def upsample_to(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    model = MiniSegmenter()
    model.load_state_dict(torch.load(os.path.join(args.out, "segmenter.pth")))
    model.eval()
    rng = np.random.default_rng(args.seed)
    totals = {"click": [], "box": [], "two": []}
    for i in range(args.scenes):
        scene = world.generate_scene(args.seed, i)
        rgb, masks = world.render_scene(scene)
        k = int(rng.integers(len(masks)))
        x = torch.from_numpy(preprocess(rgb)).unsqueeze(0)
        e0, e1, e2 = model.encoder(x)
        for kind in totals:
            points, box, target = make_prompt(rng, scene, masks, k, kind)
            points, box = to_frame(points, box, scene.width, scene.height)
            pts = torch.tensor([[(x_, y_) for x_, y_, _ in points]], dtype=torch.float32).view(1, -1, 2)
            labs = torch.tensor([[lab for _, _, lab in points]], dtype=torch.int64).view(1, -1)
            boxes = torch.tensor([box], dtype=torch.float32).view(1, 1, 4) if box else torch.zeros(1, 0, 4)
            iou_pred, logits, _ = model.decoder(e0, e1, e2, pts, labs, boxes)
            best = int(iou_pred[0].argmax())
            m = (upsample_to(logits[:, best : best + 1], scene.height, scene.width)[0, 0] > 0).numpy()
            inter = (m & target).sum()
            union = (m | target).sum()
            totals[kind].append(inter / union)
    for kind, v in totals.items():
        print(f"{kind}: mean IoU {np.mean(v):.4f} (min {np.min(v):.3f}, n {len(v)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["train", "eval", "speed"])
    ap.add_argument("--out", default=os.path.join(HERE, "out", "run"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--step-offset", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", default=None, help="start from this state dict (e.g. a stage's segmenter.pth)")
    ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (0 when resuming)")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()
    if args.command == "train":
        train(args)
    elif args.command == "eval":
        evaluate(args)
    else:
        model = MiniSegmenter()
        data = batch(0, args.batch)
        t0 = time.time()
        for _ in range(3):
            loss, _ = losses(model, data)
            loss.backward()
        print(f"{(time.time() - t0) / 3:.2f} s per step of {args.batch}")
        t0 = time.time()
        for s in range(5):
            batch(s, args.batch)
        print(f"data {(time.time() - t0) / 5:.2f} s per batch")


if __name__ == "__main__":
    main()
