"""Pillow's time for the preprocessing region-vqa does natively: the same-run baseline of
bench/imaging.ts (`npm run bench:imaging`). Reads raw RGB and 0/1 mask files, prints one JSON line.

  /usr/bin/python3 bench/pillow_preprocess.py RGB_FILE MASK_FILE WIDTH HEIGHT REPEATS

Timed, as LLaVA-1.5's demo and Hugging Face's SamProcessor do it (single-threaded, as Pillow is):
- llava: expand2square with (122, 116, 104), BICUBIC to 336, x * (1/255) in float64 to float32,
  (x - mean) / std, HWC -> CHW; the mask as a white-on-black RGB image through the same steps and the
  channel sum > 6. The image and the mask are timed apart and together.
- sam: BILINEAR with the longest side to 1024, / 255, (x - mean) / std, zero padding to 1024 x 1024.
Median milliseconds over REPEATS runs each.
"""

import json
import sys
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SAM_MEAN = np.array([0.485, 0.456, 0.406])
SAM_STD = np.array([0.229, 0.224, 0.225])


def expand2square(img):
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    out = Image.new(img.mode, (s, s), (122, 116, 104))
    out.paste(img, ((s - w) // 2, (s - h) // 2))
    return out


def normalise(img):
    a = (np.asarray(img).astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((a - MEAN) / STD).transpose(2, 0, 1)


def llava_image(rgb):
    return normalise(expand2square(Image.fromarray(rgb)).resize((336, 336), Image.BICUBIC))


def llava_mask(mask):
    m = Image.fromarray(np.repeat((mask * 255)[:, :, None], 3, axis=2))
    n = normalise(expand2square(m).resize((336, 336), Image.BICUBIC))
    return ((n[0] + n[1]) + n[2]) > 6


def sam(rgb):
    h, w = rgb.shape[:2]
    scale = 1024 / max(w, h)
    rw, rh = int(w * scale + 0.5), int(h * scale + 0.5)
    r = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.BILINEAR))
    out = np.zeros((3, 1024, 1024), dtype=np.float32)
    out[:, :rh, :rw] = ((r / 255 - SAM_MEAN) / SAM_STD).transpose(2, 0, 1)
    return out


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]


def main():
    rgb_file, mask_file, w, h, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    rgb = np.fromfile(rgb_file, dtype=np.uint8).reshape(h, w, 3)
    mask = np.fromfile(mask_file, dtype=np.uint8).reshape(h, w)
    import PIL

    print(
        json.dumps(
            {
                "pillow": PIL.__version__,
                "llava_image_ms": median_ms(lambda: llava_image(rgb), repeats),
                "llava_mask_ms": median_ms(lambda: llava_mask(mask), repeats),
                "llava_ms": median_ms(lambda: (llava_image(rgb), llava_mask(mask)), repeats),
                "sam_ms": median_ms(lambda: sam(rgb), repeats),
            }
        )
    )


if __name__ == "__main__":
    main()
