/** A plain tensor: row-major float32 data plus its shape. The only tensor type crossing stage boundaries. */
export interface Tensor {
  data: Float32Array;
  shape: number[];
}

export function tensorSize(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function makeTensor(data: Float32Array, shape: number[]): Tensor {
  if (data.length !== tensorSize(shape)) {
    throw new Error(
      `tensor data has ${data.length} values but shape [${shape.join(", ")}] needs ${tensorSize(shape)}`,
    );
  }
  return { data, shape };
}

/** Largest absolute element-wise difference; used by tests and the converters' self-checks. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > m || Number.isNaN(d)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** Whether a typed array spans its whole buffer: it can be kept or transferred without touching other data. */
export function ownsWholeBuffer(a: ArrayBufferView): boolean {
  return a.byteOffset === 0 && a.byteLength === a.buffer.byteLength;
}
