/**
 * The shape checks both CLIP converters (the Alpha-CLIP visual tower and the CLIP text tower) run on a
 * checkpoint before building a graph: one set of rules and one message style for a missing tensor, a
 * wrong shape or a non-float tensor, and the pre-LN residual blocks both towers share.
 */
import { RegionVqaError } from "../../common/errors.js";
import type { StateDict } from "../checkpoint/index.js";

/** Tensor element types the converters accept for weights. */
export const FLOAT_DTYPES: readonly string[] = ["F32", "F16", "BF16", "F64"];

/** A `checkpoint_invalid` error, naming the offending tensor when there is one. */
export function checkpointInvalid(message: string, key?: string): RegionVqaError {
  return new RegionVqaError("checkpoint_invalid", message, key ? { key } : undefined);
}

export interface ShapeChecker {
  /** The tensor's shape; `checkpoint_invalid` when it is missing or unreadable. */
  shapeOf(key: string): number[];
  /** Refuses a tensor of another shape or a non-float type. */
  expectShape(key: string, expected: number[]): void;
  /**
   * Checks `transformer.resblocks.{0..layers-1}` (attention with a fused in_proj, ln_1, ln_2, an MLP).
   * Returns block 0's MLP width; with `sameMlpWidth`, every block must have that width.
   */
  expectResidualBlocks(layers: number, width: number, options?: { sameMlpWidth?: boolean }): number;
}

/** Shape checks over `sd`; `source` prefixes every message (e.g. the checkpoint's path and ": "). */
export function shapeChecker(sd: StateDict, source: string): ShapeChecker {
  const shapeOf = (key: string): number[] => {
    if (!sd.has(key)) throw checkpointInvalid(`${source}checkpoint has no tensor "${key}"`, key);
    try {
      return sd.info(key).shape;
    } catch (err) {
      if (err instanceof RegionVqaError) {
        throw checkpointInvalid(`${source}${err.message} (needed for "${key}")`, key);
      }
      throw err;
    }
  };
  const expectShape = (key: string, expected: number[]): void => {
    const actual = shapeOf(key);
    if (actual.length !== expected.length || actual.some((d, i) => d !== expected[i])) {
      throw checkpointInvalid(
        `${source}tensor "${key}" has shape [${actual.join(", ")}], expected [${expected.join(", ")}]`,
        key,
      );
    }
    const dtype = sd.info(key).dtype;
    if (!FLOAT_DTYPES.includes(dtype)) {
      throw checkpointInvalid(`${source}tensor "${key}" has non-float type ${dtype}`, key);
    }
  };
  const expectResidualBlocks = (layers: number, width: number, options: { sameMlpWidth?: boolean } = {}) => {
    let firstMlpWidth = 0;
    for (let i = 0; i < layers; i++) {
      const p = `transformer.resblocks.${i}.`;
      expectShape(`${p}attn.in_proj.weight`, [3 * width, width]);
      expectShape(`${p}attn.in_proj.bias`, [3 * width]);
      expectShape(`${p}attn.out_proj.weight`, [width, width]);
      expectShape(`${p}attn.out_proj.bias`, [width]);
      for (const ln of ["ln_1", "ln_2"]) {
        expectShape(`${p}${ln}.weight`, [width]);
        expectShape(`${p}${ln}.bias`, [width]);
      }
      let hidden = shapeOf(`${p}mlp.c_fc.weight`)[0];
      if (i === 0) firstMlpWidth = hidden;
      else if (options.sameMlpWidth) hidden = firstMlpWidth;
      expectShape(`${p}mlp.c_fc.weight`, [hidden, width]);
      expectShape(`${p}mlp.c_fc.bias`, [hidden]);
      expectShape(`${p}mlp.c_proj.weight`, [width, hidden]);
      expectShape(`${p}mlp.c_proj.bias`, [width]);
    }
    return firstMlpWidth;
  };
  return { shapeOf, expectShape, expectResidualBlocks };
}
