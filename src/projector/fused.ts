/**
 * Fused encoder + projector: the vision converter's graph continues after `llava_features` with the
 * projector, so one ONNX run (e.g. on a GPU) returns only the projected tokens `projected`
 * [batch, G*G, n_embd] instead of shipping 576 x 1024 features back to be projected separately.
 */
import type { AlphaClipVisionManifest, VisionGraphExtension } from "../vision/convert/index.js";
import { convertVisionCheckpoint, type ConvertVisionOptions } from "../vision/convert/index.js";
import { appendProjectorNodes, PROJECTOR_OUTPUT } from "./graph.js";
import { loadProjectorWeights } from "./load.js";
import { checkProjectorWidths, type ProjectorWeights } from "./weights.js";

/** Manifest config keys a fused folder adds to the vision config. */
export interface FusedProjectorConfig {
  projector: {
    inWidth: number;
    hiddenWidth: number;
    outWidth: number;
    activation: "gelu_erf";
    source?: { path: string; format: string; dtype: string };
  };
  /** Width of each output token = the LLM's embedding length. */
  embeddingLength: number;
}

/** A `VisionGraphExtension` appending the projector after `llava_features`. */
export function fusedProjectorExtension(weights: ProjectorWeights): VisionGraphExtension {
  const config: FusedProjectorConfig = {
    projector: {
      inWidth: weights.inWidth,
      hiddenWidth: weights.hiddenWidth,
      outWidth: weights.outWidth,
      activation: "gelu_erf",
      ...(weights.source ? { source: weights.source } : {}),
    },
    embeddingLength: weights.outWidth,
  };
  return {
    kind: "alpha-clip-llava-fused",
    config: config as unknown as Record<string, unknown>,
    // The fused model feeds the LLM only: no last block, ln_post or proj.
    includeImageEmbed: false,
    extend(g, values, info) {
      checkProjectorWidths(weights, { encoderWidth: info.config.width });
      const projected = appendProjectorNodes(g, values.llavaFeatures, weights, { precision: info.precision });
      const tokens = info.config.gridSize * info.config.gridSize;
      return [{ name: PROJECTOR_OUTPUT, value: projected, shape: ["batch", tokens, weights.outWidth] }];
    },
  };
}

/**
 * `convert-vision --projector FILE`: convert a vision checkpoint with the projector from an mmproj GGUF
 * or LLaVA checkpoint fused in (manifest kind "alpha-clip-llava-fused").
 */
export async function convertFusedVisionProjector(
  options: Omit<ConvertVisionOptions, "extension"> & { projector: string | ProjectorWeights },
): Promise<AlphaClipVisionManifest> {
  const { projector, ...vision } = options;
  const weights = typeof projector === "string" ? await loadProjectorWeights(projector) : projector;
  vision.logger?.info(
    `fusing projector ${weights.inWidth} -> ${weights.hiddenWidth} -> ${weights.outWidth}` +
      (weights.source ? ` from ${weights.source.path} (${weights.source.dtype})` : ""),
  );
  return convertVisionCheckpoint({ ...vision, extension: fusedProjectorExtension(weights) });
}
