"""The miniature segmenter for the shapes world: SAM 2.1's ONNX interface, a few hundred kB of convs.

Same inputs and outputs as onnx-community's SAM 2.1 export (docs/reference.md section 8), at sizes of
its own (written into its manifest): a 256 x 256 image (stretched, like SAM 2.1's 1024 x 1024),
image_embeddings.0/1/2 at strides 2/4/8 (SAM 2.1: 4/8/16), mask logits at stride 2.

The decoder reads prompts the way SAM does: points are (x, y) in the resized frame, label 1 = include,
0 = exclude, anything else (-1, -10) ignored; a box is [x1, y1, x2, y2] in the same frame; 0.5 is added
to point coordinates inside the model (SAM's "pixel centre" shift). Every operation here has a one-to-one
ONNX counterpart in src/segmenter/mini-graph.ts, which rebuilds this forward from the saved weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG = {
    "image_size": 256,
    "mask_size": 128,
    "embed_channels": [8, 16, 48],
    "embed_strides": [2, 4, 8],
    "decoder_channels": 48,
    "point_sigma": [2.5, 10.0],  # Gaussian width (resized-frame px) of the point maps at stride 2 and 8
    "box_softness": 1.5,  # px; the box map is a product of four sigmoids of (distance / softness)
    "num_masks": 3,
}
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c0, c1, c2 = CONFIG["embed_channels"]
        self.c0a, self.c0b = conv(3, c0, CONFIG["embed_strides"][0]), conv(c0, c0)
        self.c1a, self.c1b = conv(c0, c1, 2), conv(c1, c1)
        self.c2a, self.c2b, self.c2c = conv(c1, c2, 2), conv(c2, c2), conv(c2, c2, dilation=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e0 = F.relu(self.c0b(F.relu(self.c0a(x))))
        e1 = F.relu(self.c1b(F.relu(self.c1a(e0))))
        h = F.relu(self.c2b(F.relu(self.c2a(e1))))
        e2 = self.c2c(h)
        return e0, e1, e2


def grid_centres(size: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of each cell centre in resized-frame pixels, shapes [1, 1, 1, size] and [1, 1, size, 1]."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) * stride
    return c.view(1, 1, 1, size), c.view(1, 1, size, 1)


def point_maps(points: torch.Tensor, labels: torch.Tensor, size: int, stride: int, sigma: float):
    """points [P, n, 2] (already shifted by 0.5), labels [P, n] -> (include, exclude) maps [P, 1, s, s]."""
    gx, gy = grid_centres(size, stride)
    px = points[:, :, 0].unsqueeze(-1).unsqueeze(-1)  # [P, n, 1, 1]
    py = points[:, :, 1].unsqueeze(-1).unsqueeze(-1)
    d2 = (gx - px) ** 2 + (gy - py) ** 2  # [P, n, s, s]
    g = torch.exp(d2 * (-0.5 / (sigma * sigma)))
    pos = (labels == 1).float().unsqueeze(-1).unsqueeze(-1)
    neg = (labels == 0).float().unsqueeze(-1).unsqueeze(-1)
    return (g * pos).sum(1, keepdim=True), (g * neg).sum(1, keepdim=True)


def box_map(boxes: torch.Tensor, size: int, stride: int, weight=None) -> torch.Tensor:
    """boxes [P, nb, 4] (nb = 0 or 1) -> soft inside-the-box map [P, 1, s, s] (0 without a box)."""
    gx, gy = grid_centres(size, stride)
    t = 1.0 / CONFIG["box_softness"]
    b = boxes.unsqueeze(-1).unsqueeze(-1)  # [P, nb, 4, 1, 1]
    inside = (
        torch.sigmoid((gx - b[:, :, 0]) * t)
        * torch.sigmoid((b[:, :, 2] - gx) * t)
        * torch.sigmoid((gy - b[:, :, 1]) * t)
        * torch.sigmoid((b[:, :, 3] - gy) * t)
    )  # [P, nb, s, s]
    if weight is not None:  # training only: rows of a mixed batch without a box (nb = 0 when exported)
        inside = inside * weight
    return inside.sum(1, keepdim=True)


def pooled_distance(emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Squared distance of each cell's feature to the weighted mean feature under the include map."""
    w = weights / (weights.sum((2, 3), keepdim=True) + 1e-6)
    mean = (emb * w).sum((2, 3), keepdim=True)  # [P, C, 1, 1]
    return ((emb - mean) ** 2).mean(1, keepdim=True)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c0, c1, c2 = CONFIG["embed_channels"]
        d = CONFIG["decoder_channels"]
        self.t1 = conv(c2 + 4, d)
        self.t2 = conv(d, d, dilation=2)
        self.t3 = conv(d, d, dilation=4)
        self.head = nn.Linear(2 * d, CONFIG["num_masks"] + 1)
        self.r1 = nn.Conv2d(d, c1, 1)
        self.u1 = conv(2 * c1, c1)
        self.u2 = conv(c1 + c0 + 4, 8)
        self.out = conv(8, CONFIG["num_masks"])

    def forward(self, e0, e1, e2, points, labels, boxes, box_weight=None):
        """Embeddings [P, C, h, w] (one row per prompt); points [P, n, 2], labels [P, n], boxes [P, nb, 4]."""
        size, s0, s2 = CONFIG["image_size"], CONFIG["embed_strides"][0], CONFIG["embed_strides"][2]
        sig0, sig2 = CONFIG["point_sigma"]
        points = points + 0.5
        n2, n0 = size // s2, size // s0
        pos2, neg2 = point_maps(points, labels, n2, s2, sig2)
        box2 = box_map(boxes, n2, s2, box_weight)
        h = torch.cat([e2, pos2, neg2, box2, pooled_distance(e2, pos2)], 1)
        h = F.relu(self.t1(h))
        h = F.relu(self.t2(h))
        h = F.relu(self.t3(h))
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        scores = self.head(pooled)
        u = F.interpolate(self.r1(h), scale_factor=2.0, mode="bilinear", align_corners=False)
        u = F.relu(self.u1(torch.cat([u, e1], 1)))
        u = F.interpolate(u, scale_factor=2.0, mode="bilinear", align_corners=False)
        pos0, neg0 = point_maps(points, labels, n0, s0, sig0)
        box0 = box_map(boxes, n0, s0, box_weight)
        u = torch.cat([u, e0, pos0, neg0, box0, pooled_distance(e0, pos0)], 1)
        masks = self.out(F.relu(self.u2(u)))  # [P, 3, 128, 128]
        return scores[:, : CONFIG["num_masks"]], masks, scores[:, CONFIG["num_masks"] :]


class MiniSegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()
