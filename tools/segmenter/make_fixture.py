"""Writes test/fixtures/golden/mini-sam/: reference data made by PyTorch and Pillow for the segmenter.

  /usr/bin/python3 tools/segmenter/make_fixture.py

- mini-sam-init.pth: a seeded, untrained tools/segmenter/model.py (torch.save state dict), so the
  test can rebuild its ONNX graphs with src/segmenter and compare them with PyTorch's forward.
- cases.json:
  - "forward": for shapes scene (seed 1000, index 3), the PyTorch encoder and decoder outputs of
    that model for several prompts (points only, include + exclude, box only, box + point, padding
    label -10), each output as shape, sum, sum of |x| and every 97th value;
  - "pillow_bilinear": sha256 of Pillow's BILINEAR resize of scene images to SAM frames;
  - "interpolate": torch F.interpolate(bilinear, align_corners=False) of a seeded plane to sizes up
    and down, as full value lists.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "shapes"))
import world  # noqa: E402
from model import MiniSegmenter  # noqa: E402
from train import preprocess, to_frame  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "test", "fixtures", "golden", "mini-sam")


def summary(t: torch.Tensor) -> dict:
    flat = t.detach().reshape(-1).double()
    return {
        "shape": list(t.shape),
        "sum": flat.sum().item(),
        "abs_sum": flat.abs().sum().item(),
        "samples": flat[::97].tolist(),
    }


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = MiniSegmenter()
    with torch.no_grad():  # non-zero biases everywhere, so a dropped bias shows
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.uniform_(-0.1, 0.1)
    model.eval()
    torch.save(model.state_dict(), os.path.join(OUT, "mini-sam-init.pth"))

    scene = world.generate_scene(1000, 3)
    rgb, masks = world.render_scene(scene)
    x = torch.from_numpy(preprocess(rgb)).unsqueeze(0)
    ys, xs = np.nonzero(masks[0])
    inside0 = (float(xs[len(xs) // 2]), float(ys[len(ys) // 2]))
    ys, xs = np.nonzero(masks[1])
    inside1 = (float(xs[len(xs) // 3]), float(ys[len(ys) // 3]))
    o = scene.objects[0]
    prompts = {
        "one_point": ([(*inside0, 1)], None),
        "include_exclude": ([(*inside0, 1), (*inside1, 0)], None),
        "box_only": ([], tuple(float(v) for v in o.box)),
        "box_and_point": ([(*inside0, 1)], tuple(float(v) for v in o.box)),
        "padding_label": ([(*inside0, 1), (0.0, 0.0, -10)], None),
    }
    forward = {"scene": {"seed": 1000, "index": 3}, "prompts": {}}
    with torch.no_grad():
        e0, e1, e2 = model.encoder(x)
        forward["pixel_values"] = summary(x)
        forward["image_embeddings"] = [summary(e0), summary(e1), summary(e2)]
        for name, (points, box) in prompts.items():
            fp, fb = to_frame(points, box, scene.width, scene.height)
            pts = torch.tensor([(a, b) for a, b, _ in fp], dtype=torch.float32).view(1, -1, 2)
            labs = torch.tensor([lab for _, _, lab in fp], dtype=torch.int64).view(1, -1)
            boxes = torch.tensor([fb], dtype=torch.float32).view(1, 1, 4) if fb else torch.zeros(1, 0, 4)
            iou, pred, obj = model.decoder(e0, e1, e2, pts, labs, boxes)
            forward["prompts"][name] = {
                "points": [list(p) for p in points],
                "box": list(box) if box else None,
                "iou_scores": iou.reshape(-1).tolist(),
                "object_score_logits": obj.reshape(-1).tolist(),
                "pred_masks": summary(pred),
            }

    pillow = []
    for index, size in [(3, (256, 256)), (5, (256, 256)), (7, (1024, 1024)), (3, (1024, 700))]:
        sc = world.generate_scene(1000, index)
        img, _ = world.render_scene(sc)
        out = np.asarray(Image.fromarray(img, "RGB").resize(size, Image.BILINEAR))
        pillow.append(
            {"scene": {"seed": 1000, "index": index}, "size": list(size), "sha256": hashlib.sha256(out.tobytes()).hexdigest()}
        )

    gen = torch.Generator().manual_seed(5)
    plane = torch.randn(1, 1, 16, 16, generator=gen)
    interp = {"input": plane.reshape(-1).tolist(), "side": 16, "outputs": []}
    for h, w in [(37, 23), (5, 7), (64, 64), (16, 16)]:
        y = F.interpolate(plane, size=(h, w), mode="bilinear", align_corners=False)
        interp["outputs"].append({"height": h, "width": w, "values": y.reshape(-1).tolist()})

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"forward": forward, "pillow_bilinear": pillow, "interpolate": interp}, f)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
