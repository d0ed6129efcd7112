/**
 * Conversions between float32 and the two 16-bit float formats found in checkpoints and ONNX files.
 * Written by hand because exact rounding matters: float32 -> float16 rounds to nearest, ties to even,
 * with subnormals, overflow to infinity and NaN preserved, as numpy/PyTorch do.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE binary16 bits for one float32 value (round to nearest even). */
export function float32ToFloat16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;

  if (exp === 0xff) {
    // Inf stays Inf; NaN keeps a set quiet bit so it stays NaN.
    return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> Inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the mantissa with its implicit bit into place.
    if (e < -10) return sign; // too small even for the smallest subnormal: rounds to zero
    mant |= 0x800000;
    const shift = 14 - e;
    const halfMant = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    const roundUp = rem > halfway || (rem === halfway && (halfMant & 1) === 1);
    return sign | (halfMant + (roundUp ? 1 : 0));
  }
  const halfMant = mant >>> 13;
  const rem = mant & 0x1fff;
  let bits = sign | (e << 10) | halfMant;
  // A carry out of the mantissa correctly bumps the exponent (and becomes Inf at the top).
  if (rem > 0x1000 || (rem === 0x1000 && (halfMant & 1) === 1)) bits += 1;
  return bits;
}

/** float32 value of IEEE binary16 bits. */
export function float16BitsToFloat32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function float32ArrayToFloat16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < bits.length; i++) {
    const x = bits[i];
    const e = ((x >>> 23) & 0xff) - 112; // half exponent
    if (e > 0 && e < 0x1f) {
      // Normal half (the common case), inlined: round to nearest even on the 13 dropped bits.
      const halfMant = (x >>> 13) & 0x3ff;
      const rem = x & 0x1fff;
      let h = ((x >>> 16) & 0x8000) | (e << 10) | halfMant;
      if (rem > 0x1000 || (rem === 0x1000 && (halfMant & 1) === 1)) h += 1;
      out[i] = h;
    } else {
      out[i] = float32ToFloat16Bits(values[i]);
    }
  }
  return out;
}

export function float16ArrayToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = float16BitsToFloat32(bits[i]);
  return out;
}

/** bfloat16 is the top half of a float32, so widening is a 16-bit shift. */
export function bfloat16ArrayToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i] << 16;
  return out;
}
