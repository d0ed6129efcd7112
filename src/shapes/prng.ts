/**
 * mulberry32, written with the same 32-bit integer steps as tools/shapes/world.py so that one seed
 * gives one scene in both languages.
 */
export class Mulberry32 {
  private a: number;

  constructor(state: number) {
    this.a = state >>> 0;
  }

  nextU32(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    const a = this.a;
    let t = Math.imul(a ^ (a >>> 15), 1 | a) >>> 0;
    t = ((t + (Math.imul(t ^ (t >>> 7), 61 | t) >>> 0)) >>> 0) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform in [0, 1): the 32-bit output divided by 2^32 (exact in a double). */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [lo, hi], both ends included. */
  randInt(lo: number, hi: number): number {
    return lo + Math.floor(this.nextFloat() * (hi - lo + 1));
  }
}

const U32_MAX = 0xffffffff;

/** The generator of scene `index` of `seed` (both integers in [0, 2^32)). */
export function sceneRng(seed: number, index: number): Mulberry32 {
  if (
    !Number.isInteger(seed) ||
    !Number.isInteger(index) ||
    seed < 0 ||
    index < 0 ||
    seed > U32_MAX ||
    index > U32_MAX
  ) {
    throw new RangeError("seed and index must be integers in [0, 2^32)");
  }
  const state = (Math.imul(seed >>> 0, 0x9e3779b1) + Math.imul(index >>> 0, 0x85ebca77) + 0x27d4eb2f) >>> 0;
  const rng = new Mulberry32(state);
  for (let i = 0; i < 4; i++) rng.nextU32(); // let neighbouring seeds drift apart
  return rng;
}
