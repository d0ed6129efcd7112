/**
 * IEEE 754 binary16 <-> binary32 conversion. Node 20 has no Float16Array, and GGUF / ONNX fp16 weights
 * must round exactly like numpy / torch (round to nearest, ties to even), so the bit work is done here.
 * All typed-array views assume a little-endian host (checked where bytes meet files).
 */

/** binary32 bit pattern -> binary16 bit pattern, round to nearest even; NaN stays NaN, overflow -> inf. */
export function float32BitsToFloat16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // re-biased exponent (127 -> 15)
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): value = M * 2^-24 with M = (1.mant) shifted right by 14 - e.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) !== 0)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (and reaches inf at the top).
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) !== 0)) half++;
  return sign | half;
}

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

export function float32ToFloat16Bits(v: number): number {
  scratchF32[0] = v;
  return float32BitsToFloat16Bits(scratchU32[0]);
}

let halfTable: Float32Array | undefined;

/** All 65536 half values as float32 (256 KiB, built once): decoding is one table lookup. */
function float16Table(): Float32Array {
  if (halfTable) return halfTable;
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) {
      // zero or subnormal: mant * 2^-24, exact in float32
      table[h] = (mant / 16777216) * (sign !== 0 ? -1 : 1);
    } else if (exp === 0x1f) {
      bits[h] = sign | 0x7f800000 | (mant << 13);
    } else {
      bits[h] = sign | ((exp + 112) << 23) | (mant << 13);
    }
  }
  halfTable = table;
  return table;
}

export function float16BitsToFloat32(h: number): number {
  return float16Table()[h & 0xffff];
}

/** Bulk float32 -> half bits. `out` may be given to reuse a buffer (same length). */
export function float32ArrayToFloat16Bits(src: Float32Array, out?: Uint16Array): Uint16Array {
  const dst = out ?? new Uint16Array(src.length);
  if (dst.length !== src.length) throw new Error("float16 output length mismatch");
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) dst[i] = float32BitsToFloat16Bits(bits[i]);
  return dst;
}

/** Bulk half bits -> float32. */
export function float16BitsToFloat32Array(src: Uint16Array, out?: Float32Array): Float32Array {
  const dst = out ?? new Float32Array(src.length);
  if (dst.length !== src.length) throw new Error("float16 output length mismatch");
  const table = float16Table();
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]];
  return dst;
}

/** Round every value to the nearest float16 and back (what storing as F16 does to the data). */
export function roundToFloat16(src: Float32Array): Float32Array {
  return float16BitsToFloat32Array(float32ArrayToFloat16Bits(src));
}
