/**
 * Token id batches as the text encoder takes them: [N, contextLength] row-major, as CLIP's `tokenize`
 * makes them (SOT, ids, EOT, zero padding; int32 in the reference).
 */
import { RegionVqaError } from "../common/errors.js";
import { eotIndex } from "./reference.js";

/** Row-major token ids [N, L]. */
export interface TokenIds {
  data: Int32Array | Uint32Array | BigInt64Array | ArrayLike<number>;
  shape: readonly number[];
}

/** CLIP's special ids (docs/reference.md section 6). */
export const SOT_TOKEN_ID = 49406;
export const EOT_TOKEN_ID = 49407;

export interface CheckedIds {
  /** The ids as ONNX Runtime's int64, [rows, length] row-major. */
  data: BigInt64Array;
  rows: number;
  length: number;
  /** Per row, the position CLIP pools (the first largest id). */
  eot: number[];
}

/**
 * Accepts `TokenIds` or an array of rows; checks that it is [N >= 1, contextLength] with integer ids
 * in [0, vocabSize). Throws `invalid_request` otherwise.
 */
export function checkTokenIds(
  ids: TokenIds | readonly ArrayLike<number>[],
  contextLength: number,
  vocabSize: number,
): CheckedIds {
  let rows: number;
  let get: (i: number) => number;
  if (Array.isArray(ids)) {
    const list = ids as readonly ArrayLike<number>[];
    rows = list.length;
    const bad = list.findIndex((r) => r.length !== contextLength);
    if (bad >= 0) {
      throw new RegionVqaError(
        "invalid_request",
        `token id row ${bad} has ${list[bad].length} ids; this text encoder takes ${contextLength} per row`,
      );
    }
    get = (i) => Number(list[Math.floor(i / contextLength)][i % contextLength]);
  } else {
    const t = ids as TokenIds;
    if (t.shape.length !== 2 || t.shape[1] !== contextLength || t.data.length !== t.shape[0] * t.shape[1]) {
      throw new RegionVqaError(
        "invalid_request",
        `token ids must be [N, ${contextLength}] (${t.data.length} values given as [${t.shape.join(", ")}])`,
      );
    }
    rows = t.shape[0];
    const data = t.data;
    get =
      data instanceof BigInt64Array ? (i) => Number(data[i]) : (i) => Number((data as ArrayLike<number>)[i]);
  }
  if (rows < 1) throw new RegionVqaError("invalid_request", "no token id rows to encode");
  const data = new BigInt64Array(rows * contextLength);
  const eot: number[] = [];
  const row = new Float64Array(contextLength);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < contextLength; c++) {
      const v = get(r * contextLength + c);
      if (!Number.isInteger(v) || v < 0 || v >= vocabSize) {
        throw new RegionVqaError(
          "invalid_request",
          `token id ${v} at row ${r}, position ${c} is outside the vocabulary [0, ${vocabSize})`,
        );
      }
      row[c] = v;
      data[r * contextLength + c] = BigInt(v);
    }
    eot.push(eotIndex(row));
  }
  return { data, rows, length: contextLength, eot };
}

/**
 * Parse a raw little-endian file of int32 or int64 token ids [N, contextLength] (e.g. a saved
 * `tokenize` output). Throws `invalid_request` when its size does not fit.
 */
export function parseTokenIdFile(
  bytes: Uint8Array,
  dtype: "int32" | "int64",
  contextLength: number,
): TokenIds {
  const item = dtype === "int32" ? 4 : 8;
  const rowBytes = item * contextLength;
  if (bytes.byteLength === 0 || bytes.byteLength % rowBytes !== 0) {
    throw new RegionVqaError(
      "invalid_request",
      `token id file of ${bytes.byteLength} bytes is not a whole number of ${dtype} rows of ${contextLength}`,
    );
  }
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  const rows = bytes.byteLength / rowBytes;
  const data = dtype === "int32" ? new Int32Array(copy.buffer) : new BigInt64Array(copy.buffer);
  return { data, shape: [rows, contextLength] };
}
