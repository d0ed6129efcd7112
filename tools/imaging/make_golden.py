"""Writes test/fixtures/golden/pillow-12mp/cases.json: Pillow's and PyTorch's results on phone-sized
images, as SHA-256 hashes, for test/imaging-12mp.test.ts.

  /usr/bin/python3 tools/imaging/make_golden.py      # Debian's python3-pil, python3-numpy, python3-torch

The images and masks are not stored: both this script and the test make them from a formula
(`scene_image`, `scene_mask`; the test's copy is test/support/seeded-image.ts), so a few hundred bytes
of hashes check 12-megapixel results bit for bit. The reference operations are written out here the
way the reference code does them:
- LLaVA-1.5 (Alpha-CLIP's LLaVA demo): expand2square with (122, 116, 104), Pillow BICUBIC to 336,
  x * (1/255) in float64 cast to float32, (x - mean) / std in float32; the mask as a white-on-black RGB
  image through the same steps, alpha = +-1.9231 where the channel sum is > 6.
- SAM 1 (Hugging Face SamProcessor): longest side to 1024 with Pillow BILINEAR (int(x * scale + 0.5)),
  x / 255, (x - mean) / std, zero padding to 1024 x 1024; SAM 2.1: BILINEAR to exactly 1024 x 1024.
- SAM post-processing: F.interpolate(bilinear, align_corners=False) of 256 x 256 logits (`scene_logits`) to the
  image (SAM 2.1), or to 1024, cropped, then to the image (SAM 1); > 0 is inside.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "test", "fixtures", "golden", "pillow-12mp")

CASES = [
    ("landscape", 4032, 3024, 1),
    ("portrait", 3024, 4032, 2),
    ("odd-landscape", 4031, 3023, 3),
    ("odd-portrait", 3001, 4057, 4),
]
PAD = (122, 116, 104)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SAM_MEAN = [0.485, 0.456, 0.406]
SAM_STD = [0.229, 0.224, 0.225]
U32 = np.uint32


def mix(n: np.ndarray) -> np.ndarray:
    """A 32-bit integer hash (lowbias32): every step wraps modulo 2^32."""
    n = n ^ (n >> U32(16))
    n = n * U32(0x7FEB352D)
    n = n ^ (n >> U32(15))
    n = n * U32(0x846CA68B)
    return n ^ (n >> U32(16))


def scene_image(w: int, h: int, seed: int) -> np.ndarray:
    """HWC uint8: gradients, a checkerboard of hard edges and per-pixel noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.uint32)
    out = np.empty((h, w, 3), dtype=np.uint8)
    for c in range(3):
        n = (x * U32(73856093)) ^ (y * U32(19349663)) ^ U32((c * 83492791) & 0xFFFFFFFF) ^ U32((seed * 2654435761) & 0xFFFFFFFF)
        noise = mix(n) & U32(63)
        gradient = (x * U32(255)) // U32(w - 1) + (y * U32(127)) // U32(h - 1) + U32(c * 40)
        checker = ((x // U32(97) + y // U32(61)) & U32(1)) * U32(100)
        out[:, :, c] = ((gradient + noise + checker) & U32(255)).astype(np.uint8)
    return out


def scene_mask(w: int, h: int) -> np.ndarray:
    """HW bool: an ellipse crossing the right edge, and a rectangle in the top-left corner."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    cx, cy, rx, ry = (3 * w) // 4, h // 2, w // 3, (2 * h) // 5
    ellipse = (x - cx) ** 2 * ry**2 + (y - cy) ** 2 * rx**2 <= rx**2 * ry**2
    corner = (x < w // 5) & (y < h // 3)
    return ellipse | corner


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def expand2square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), PAD)
        out.paste(img, (0, (w - h) // 2))
    else:
        out = Image.new(img.mode, (h, h), PAD)
        out.paste(img, ((h - w) // 2, 0))
    return out


def clip_normalise(u8: np.ndarray) -> np.ndarray:
    scaled = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((scaled - CLIP_MEAN) / CLIP_STD).astype(np.float32).transpose(2, 0, 1)


def scene_logits(seed: int) -> torch.Tensor:
    """256 x 256 float32 mask logits: noise in [-4, 4) plus a left-to-right ramp, so the mask has edges."""
    y, x = np.mgrid[0:256, 0:256].astype(np.uint32)
    noise = (mix(y * U32(256) + x + U32(seed * 65536)) & U32(0xFFFF)).astype(np.float64)
    values = (noise / 65536 - 0.5) * 8 + (x.astype(np.float64) - 127.5) / 40
    return torch.from_numpy(values.astype(np.float32))


def interpolate(plane: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(plane[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    cases = {}
    for name, w, h, seed in CASES:
        rgb = scene_image(w, h, seed)
        mask = scene_mask(w, h)
        case = {"width": w, "height": h, "seed": seed, "image_sha256": sha(rgb), "mask_sha256": sha(mask.astype(np.uint8))}
        # LLaVA-1.5
        resized = np.asarray(expand2square(Image.fromarray(rgb)).resize((336, 336), Image.BICUBIC))
        case["llava_resized_u8"] = sha(resized)
        case["llava_pixel_values_f32"] = sha(clip_normalise(resized))
        mask_rgb = Image.fromarray(np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, axis=2))
        mask_resized = np.asarray(expand2square(mask_rgb).resize((336, 336), Image.BICUBIC))
        case["llava_mask_resized_u8"] = sha(mask_resized)
        channel_sum = clip_normalise(mask_resized)
        channel_sum = (channel_sum[0] + channel_sum[1]) + channel_sum[2]
        foreground = channel_sum > 6
        case["llava_foreground_u8"] = sha(foreground.astype(np.uint8))
        case["llava_alpha_f32"] = sha(np.where(foreground, np.float32(1.9231), np.float32(-1.9231)).astype(np.float32))
        case["llava_foreground_count"] = int(foreground.sum())
        # SAM 1 (longest side 1024, padded) and SAM 2.1 (stretched to 1024 x 1024)
        scale = 1024 / max(w, h)
        rw, rh = int(w * scale + 0.5), int(h * scale + 0.5)
        sam1 = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.BILINEAR))
        case["sam1_frame"] = [rw, rh]
        case["sam1_resized_u8"] = sha(sam1)
        planes = np.zeros((3, 1024, 1024), dtype=np.float32)
        for c in range(3):
            planes[c, :rh, :rw] = ((sam1[:, :, c] / 255 - SAM_MEAN[c]) / SAM_STD[c]).astype(np.float32)
        case["sam1_pixel_values_f32"] = sha(planes)
        sam2 = np.asarray(Image.fromarray(rgb).resize((1024, 1024), Image.BILINEAR))
        case["sam2_resized_u8"] = sha(sam2)
        # Mask post-processing
        logits = scene_logits(seed)
        full2 = interpolate(logits, h, w) > 0
        case["sam2_mask_u8"] = sha(full2.numpy().astype(np.uint8))
        case["sam2_mask_area"] = int(full2.sum())
        padded = interpolate(logits, 1024, 1024)[:rh, :rw].contiguous()
        full1 = interpolate(padded, h, w) > 0
        case["sam1_mask_u8"] = sha(full1.numpy().astype(np.uint8))
        case["sam1_mask_area"] = int(full1.sum())
        cases[name] = case
        print(name, "done")
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(
            {
                "made_by": f"tools/imaging/make_golden.py with Pillow {PIL.__version__}, NumPy {np.__version__}, PyTorch {torch.__version__}",
                "cases": cases,
            },
            f,
            indent=1,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
