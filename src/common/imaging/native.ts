/**
 * The imaging addon (native/imaging.cc, built by `npm ci`): the CPU kernels of preprocessing and mask
 * work, run on libuv's thread pool. Each function checks its arguments on the calling thread, then
 * returns a Promise that settles when the work is done; until then the caller must neither change nor
 * transfer the arrays it passed (the pool in `pool.ts` is the only caller).
 *
 * Without the addon (REGION_VQA_SKIP_NATIVE=1 at install, or REGION_VQA_IMAGING=typescript) the
 * TypeScript specifications run instead, on the calling thread.
 */
import { createRequire } from "node:module";

export interface NativeCoefficients {
  ksize: number;
  start: Int32Array;
  count: Int32Array;
  weights: Int32Array;
}

export interface NativeTaps {
  i0: Int32Array;
  i1: Int32Array;
  w1: Float32Array;
}

/** 1 = grey, 3 = RGB, 4 = a 0/1 mask read as a white-on-black RGB image. */
export type NativePixelKind = 1 | 3 | 4;

export interface NativeImaging {
  /** Pillow's resize of an image placed on a canvas of a pad colour. Resolves 0. */
  resample(o: {
    src: Uint8Array;
    kind: NativePixelKind;
    width: number;
    height: number;
    canvas?: { width: number; height: number; left: number; top: number; pad: Uint8Array };
    horizontal?: NativeCoefficients;
    vertical?: NativeCoefficients;
    out: Uint8Array;
    threads: number;
  }): Promise<number>;
  /** HWC uint8 -> CHW float32 through a per-channel lookup table, in the top-left of a square frame. */
  planes(o: {
    src: Uint8Array;
    width: number;
    height: number;
    lut: Float32Array;
    frame: number;
    out: Float32Array;
    threads: number;
  }): Promise<number>;
  /** LLaVA's alpha from a resized mask image; resolves the foreground count. */
  llavaAlpha(o: {
    src: Uint8Array;
    lut: Float32Array;
    threshold: number;
    inside: number;
    outside: number;
    alpha: Float32Array;
    foreground: Uint8Array;
  }): Promise<number>;
  /** PyTorch's bilinear resize of a float window into `out`, or thresholded at 0 into `mask` (resolves its area). */
  bilinear(o: {
    src: Float32Array;
    stride: number;
    rows: number;
    window: { left: number; top: number; width: number; height: number };
    x: NativeTaps;
    y: NativeTaps;
    out?: Float32Array;
    mask?: Uint8Array;
    threads: number;
  }): Promise<number>;
  /** out[i] = src[i] >= threshold ? one : 0; resolves the count. */
  threshold(o: {
    src: Uint8Array;
    threshold: number;
    one: number;
    out: Uint8Array;
    threads: number;
  }): Promise<number>;
  /** Even-odd polygon rings, united, into a mask; resolves its area. */
  polygons(o: {
    coords: Float64Array;
    ringStarts: Int32Array;
    width: number;
    height: number;
    out: Uint8Array;
    threads: number;
  }): Promise<number>;
  /** COCO run lengths (checked to cover the image) into a mask; resolves its area. */
  rle(o: {
    counts: Float64Array;
    width: number;
    height: number;
    out: Uint8Array;
    threads: number;
  }): Promise<number>;
  /** 1 inside the pixel rectangle [left, right) x [top, bottom), 0 elsewhere; resolves the area. */
  fill(o: {
    out: Uint8Array;
    width: number;
    height: number;
    left: number;
    top: number;
    right: number;
    bottom: number;
    threads: number;
  }): Promise<number>;
  /** A 0/1 mask's COCO run lengths (column-major, background first). */
  rleCounts(o: { mask: Uint8Array; width: number; height: number }): Promise<Uint32Array>;
  /** Decoded 1-4 channel pixels -> RGB (grey replicated) and the alpha plane. */
  split(o: {
    src: Uint8Array;
    channels: number;
    rgb: Uint8Array;
    alpha?: Uint8Array;
    threads: number;
  }): Promise<number>;
  /** Decoded mask-image pixels -> 0/1 (any colour channel nonzero); resolves the area. */
  pixelMask(o: { src: Uint8Array; channels: number; out: Uint8Array; threads: number }): Promise<number>;
  /** SHA-256 (hex) of the parts' concatenation, with the OpenSSL Node links (when `hasSha256`). */
  sha256(o: { parts: Uint8Array[] }): Promise<string>;
  readonly hasSha256: boolean;
  /** Whether the AVX2 versions of the loops run. */
  readonly avx2: boolean;
}

const ADDON = "../../../build/Release/region_vqa_imaging.node";

let loaded: { addon?: NativeImaging; reason?: string } | undefined;

/** The addon, or why the TypeScript kernels run instead. Loaded once per thread. */
export function loadNativeImaging(): {
  addon?: NativeImaging;
  reason?: string;
} {
  if (loaded) return loaded;
  if (process.env.REGION_VQA_IMAGING === "typescript") {
    loaded = { reason: "REGION_VQA_IMAGING=typescript" };
    return loaded;
  }
  try {
    loaded = { addon: createRequire(import.meta.url)(ADDON) as NativeImaging };
  } catch (err) {
    loaded = {
      reason: `the imaging addon is not built (npm run build:native): ${(err as Error).message.split("\n")[0]}`,
    };
  }
  return loaded;
}
