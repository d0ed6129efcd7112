/**
 * The generic image kernels, each as one job of an `ImagingPool`: native (off the event loop) when
 * the addon is built, else its TypeScript specification. The model folders compose them into their
 * processors (src/vision/processor.ts, src/segmenter/processor.ts).
 */
import { createHash } from "node:crypto";
import { pillowCoefficients, pillowResize, type PillowFilter } from "./pillow-resize.js";
import type { ImagingPool } from "./pool.js";
import { bilinearTaps, resizeBilinear } from "./torch-bilinear.js";
import type { NativePixelKind } from "./native.js";

/**
 * How a source's bytes are pixels: "grey" and "rgb" as they are, "mask" a 0/1 mask read as the
 * white-on-black RGB image the LLaVA reference pushes through the image geometry (nonzero = 255).
 */
export type PixelKind = "grey" | "rgb" | "mask";

const NATIVE_KIND: Record<PixelKind, NativePixelKind> = { grey: 1, rgb: 3, mask: 4 };

/**
 * An output for a native kernel, which writes every value: not zeroed, because zeroing a 12-36 MB
 * array (glibc's calloc on reused memory) would run on the event loop.
 */
export function uninitializedBytes(n: number): Uint8Array {
  const b = Buffer.allocUnsafeSlow(n);
  return new Uint8Array(b.buffer, b.byteOffset, n);
}

/** `uninitializedBytes` for float32 outputs. */
export function uninitializedFloats(n: number): Float32Array {
  const b = Buffer.allocUnsafeSlow(n * 4);
  return new Float32Array(b.buffer, b.byteOffset, n);
}

/** The image placed at (left, top) on a canvas filled with `color` (LLaVA's expand2square). */
export interface Canvas {
  width: number;
  height: number;
  left: number;
  top: number;
  color: readonly [number, number, number];
}

export interface ResampleSpec {
  src: Uint8Array;
  kind: PixelKind;
  width: number;
  height: number;
  /** Default: the image itself (no padding). */
  canvas?: Canvas;
  outWidth: number;
  outHeight: number;
  filter: PillowFilter;
}

/** The canvas (with the image on it) as HWC bytes: the specification's explicit form of `canvas`. */
export function canvasPixels(spec: Pick<ResampleSpec, "src" | "kind" | "width" | "height" | "canvas">): {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
} {
  const { src, kind, width: w, height: h } = spec;
  const channels = kind === "grey" ? 1 : 3;
  const c = spec.canvas ?? { width: w, height: h, left: 0, top: 0, color: [0, 0, 0] as const };
  const data = new Uint8Array(c.width * c.height * channels);
  if (spec.canvas) {
    for (let i = 0; i < c.width * c.height; i++)
      for (let ch = 0; ch < channels; ch++) data[i * channels + ch] = c.color[ch];
  }
  for (let y = 0; y < h; y++) {
    const dst = ((y + c.top) * c.width + c.left) * channels;
    if (kind === "mask") {
      for (let x = 0; x < w; x++) {
        const v = src[y * w + x] ? 255 : 0;
        data[dst + 3 * x] = data[dst + 3 * x + 1] = data[dst + 3 * x + 2] = v;
      }
    } else {
      data.set(src.subarray(y * w * channels, (y + 1) * w * channels), dst);
    }
  }
  return { data, width: c.width, height: c.height, channels };
}

/**
 * Pillow's `resize` (BICUBIC or BILINEAR, 8-bit, bit for bit) of the canvas with the image on it.
 * Returns HWC bytes: one channel for "grey", three otherwise.
 */
export function resample(pool: ImagingPool, spec: ResampleSpec): Promise<Uint8Array> {
  const cw = spec.canvas?.width ?? spec.width;
  const chh = spec.canvas?.height ?? spec.height;
  const channels = spec.kind === "grey" ? 1 : 3;
  return pool.run(
    async (addon, threads) => {
      const out = uninitializedBytes(spec.outWidth * spec.outHeight * channels);
      await addon.resample({
        src: spec.src,
        kind: NATIVE_KIND[spec.kind],
        width: spec.width,
        height: spec.height,
        canvas: spec.canvas && { ...spec.canvas, pad: Uint8Array.from(spec.canvas.color) },
        horizontal: spec.outWidth !== cw ? pillowCoefficients(cw, spec.outWidth, spec.filter) : undefined,
        vertical: spec.outHeight !== chh ? pillowCoefficients(chh, spec.outHeight, spec.filter) : undefined,
        out,
        threads,
      });
      return out;
    },
    () => {
      const c = canvasPixels(spec);
      return pillowResize(c.data, c.width, c.height, c.channels, spec.outWidth, spec.outHeight, spec.filter);
    },
  );
}

/**
 * HWC RGB bytes [height, width, 3] -> CHW float32 [3, frame, frame]: channel c of each pixel becomes
 * lut[c * 256 + value]; the frame outside the image stays 0.
 */
export function toPlanes(
  pool: ImagingPool,
  src: Uint8Array,
  width: number,
  height: number,
  lut: Float32Array,
  frame: number,
): Promise<Float32Array> {
  return pool.run(
    async (addon, threads) => {
      const out = uninitializedFloats(3 * frame * frame);
      await addon.planes({ src, width, height, lut, frame, out, threads });
      return out;
    },
    () => {
      const plane = frame * frame;
      const out = new Float32Array(3 * plane);
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < height; y++) {
          for (let x = 0; x < width; x++)
            out[c * plane + y * frame + x] = lut[c * 256 + src[(y * width + x) * 3 + c]];
        }
      }
      return out;
    },
  );
}

export interface FloatWindow {
  /** Row-major float plane `stride` wide and `rows` high. */
  src: Float32Array;
  stride: number;
  rows: number;
  /** The part resized (default: the whole plane). */
  window?: { left: number; top: number; width: number; height: number };
}

function windowOf(w: FloatWindow) {
  return w.window ?? { left: 0, top: 0, width: w.stride, height: w.rows };
}

/** The native bilinear job's arguments for `input` resized to outWidth x outHeight. */
function bilinearArgs(input: FloatWindow, outWidth: number, outHeight: number, threads: number) {
  const window = windowOf(input);
  return {
    src: input.src,
    stride: input.stride,
    rows: input.rows,
    window,
    x: bilinearTaps(window.width, outWidth),
    y: bilinearTaps(window.height, outHeight),
    threads,
  };
}

/** PyTorch's bilinear resize (align_corners=False) of a float window to outWidth x outHeight. */
export function bilinearResize(
  pool: ImagingPool,
  input: FloatWindow,
  outWidth: number,
  outHeight: number,
): Promise<Float32Array> {
  const window = windowOf(input);
  return pool.run(
    async (addon, threads) => {
      const out = uninitializedFloats(outWidth * outHeight);
      await addon.bilinear({ ...bilinearArgs(input, outWidth, outHeight, threads), out });
      return out;
    },
    () => resizeBilinear(input.src, input.stride, window, outWidth, outHeight),
  );
}

/** `bilinearResize` thresholded at 0 (a logit > 0 is inside): a 0/1 mask and its area. */
export function bilinearMask(
  pool: ImagingPool,
  input: FloatWindow,
  outWidth: number,
  outHeight: number,
): Promise<{ data: Uint8Array; area: number }> {
  const window = windowOf(input);
  return pool.run(
    async (addon, threads) => {
      const data = uninitializedBytes(outWidth * outHeight);
      const area = await addon.bilinear({ ...bilinearArgs(input, outWidth, outHeight, threads), mask: data });
      return { data, area };
    },
    () => {
      const logits = resizeBilinear(input.src, input.stride, window, outWidth, outHeight);
      const data = new Uint8Array(logits.length);
      let area = 0;
      for (let i = 0; i < logits.length; i++) {
        if (logits[i] > 0) {
          data[i] = 1;
          area++;
        }
      }
      return { data, area };
    },
  );
}

/** out[i] = src[i] >= threshold ? one : 0, and how many are set. */
export function thresholdBytes(
  pool: ImagingPool,
  src: Uint8Array,
  threshold: number,
  one = 1,
): Promise<{ data: Uint8Array; area: number }> {
  return pool.run(
    async (addon, threads) => {
      const data = uninitializedBytes(src.length);
      const area = await addon.threshold({ src, threshold, one, out: data, threads });
      return { data, area };
    },
    () => {
      const data = new Uint8Array(src.length);
      let area = 0;
      for (let i = 0; i < src.length; i++) {
        if (src[i] >= threshold) {
          data[i] = one;
          area++;
        }
      }
      return { data, area };
    },
  );
}

/**
 * Decoded pixels (1 to 4 channels, as sharp returns them) -> RGB, grey replicated as Pillow's
 * convert("RGB") does, and for 2 and 4 channels the last channel as alpha.
 */
export function splitPixels(
  pool: ImagingPool,
  src: Uint8Array,
  channels: number,
): Promise<{ rgb: Uint8Array; alpha?: Uint8Array }> {
  const n = src.length / channels;
  const hasAlpha = channels === 2 || channels === 4;
  return pool.run(
    async (addon, threads) => {
      const rgb = uninitializedBytes(n * 3);
      const alpha = hasAlpha ? uninitializedBytes(n) : undefined;
      await addon.split({ src, channels, rgb, alpha, threads });
      return { rgb, alpha };
    },
    () => {
      const rgb = new Uint8Array(n * 3);
      const alpha = hasAlpha ? new Uint8Array(n) : undefined;
      for (let i = 0; i < n; i++) {
        const s = i * channels;
        if (channels >= 3) {
          rgb[i * 3] = src[s];
          rgb[i * 3 + 1] = src[s + 1];
          rgb[i * 3 + 2] = src[s + 2];
        } else {
          rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = src[s];
        }
        if (alpha) alpha[i] = src[s + channels - 1];
      }
      return { rgb, alpha };
    },
  );
}

/** Decoded mask-image pixels -> 0/1: inside when any colour channel is nonzero (alpha ignored). */
export function pixelsToMask(
  pool: ImagingPool,
  src: Uint8Array,
  channels: number,
): Promise<{ data: Uint8Array; area: number }> {
  const n = src.length / channels;
  return pool.run(
    async (addon, threads) => {
      const data = uninitializedBytes(n);
      const area = await addon.pixelMask({ src, channels, out: data, threads });
      return { data, area };
    },
    () => {
      const data = new Uint8Array(n);
      let area = 0;
      for (let i = 0; i < n; i++) {
        const s = i * channels;
        const any = channels >= 3 ? src[s] | src[s + 1] | src[s + 2] : src[s];
        if (any) {
          data[i] = 1;
          area++;
        }
      }
      return { data, area };
    },
  );
}

/** SHA-256 (hex) of the parts' concatenation: off the event loop with the addon, else node:crypto here. */
export function sha256Hex(pool: ImagingPool, ...parts: Uint8Array[]): Promise<string> {
  const here = () => {
    const h = createHash("sha256");
    for (const p of parts) h.update(p);
    return h.digest("hex");
  };
  return pool.run((addon) => (addon.hasSha256 ? addon.sha256({ parts }) : Promise.resolve(here())), here);
}
