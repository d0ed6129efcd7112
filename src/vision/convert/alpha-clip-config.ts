/**
 * Validates an Alpha-CLIP (or OpenAI CLIP) visual state dict and infers its configuration from the
 * tensor shapes. Head count is the one thing shapes cannot tell: CLIP's convention is width / 64.
 */
import { RegionVqaError } from "../../common/errors.js";
import { renameKeys, type StateDict } from "../checkpoint/index.js";
import { checkpointInvalid, shapeChecker } from "./checkpoint-shapes.js";

export interface AlphaClipVisionConfig {
  width: number;
  layers: number;
  heads: number;
  patchSize: number;
  imageSize: number;
  /** Patches per side: imageSize / patchSize. */
  gridSize: number;
  outputDim: number;
  /**
   * Which hidden state `llava_features` is, counting 0 = after ln_pre and i = after block i:
   * LLaVA uses layers - 1 (HF `hidden_states[-2]`), with the CLS token dropped.
   */
  llavaFeatureLayer: number;
}

export interface InspectedCheckpoint {
  config: AlphaClipVisionConfig;
  /** The state dict with keys as Alpha-CLIP names them (a `visual.` prefix removed). */
  stateDict: StateDict;
  /** False for a plain CLIP visual encoder; the converter then uses an all-zero alpha conv. */
  hasAlphaConv: boolean;
  warnings: string[];
}

const invalid = checkpointInvalid;

const BLOCK_KEY = /^transformer\.resblocks\.(\d+)\./;

/**
 * Check every tensor the encoder needs and infer the configuration. A state dict of a whole CLIP
 * model (keys `visual.*` next to the text encoder's) is accepted: its `visual.` part is used.
 */
export function inspectAlphaClipStateDict(
  input: StateDict,
  options: { heads?: number } = {},
): InspectedCheckpoint {
  const warnings: string[] = [];
  let sd = input;
  if (!sd.has("conv1.weight") && sd.has("visual.conv1.weight")) {
    sd = renameKeys(input, (k) => (k.startsWith("visual.") ? k.slice("visual.".length) : undefined));
    warnings.push("checkpoint is a whole CLIP model; using its visual.* tensors");
  }
  const source = input.source.path ? `${input.source.path}: ` : "";

  if (!sd.has("conv1.weight")) {
    const looksText = sd.has("token_embedding.weight") || sd.has("text_projection");
    throw invalid(
      `${source}not an Alpha-CLIP visual encoder: tensor "conv1.weight" is missing` +
        (looksText
          ? " (this looks like a CLIP text encoder)"
          : ` (it has ${sd.keys().length} tensors, e.g. ${sd.keys().slice(0, 3).join(", ") || "none"})`),
      "conv1.weight",
    );
  }
  const { shapeOf, expectShape, expectResidualBlocks } = shapeChecker(sd, source);

  const conv = shapeOf("conv1.weight");
  if (conv.length !== 4 || conv[1] !== 3 || conv[2] !== conv[3] || conv[2] < 1) {
    throw invalid(
      `${source}tensor "conv1.weight" has shape [${conv.join(", ")}], expected [width, 3, patch, patch]`,
      "conv1.weight",
    );
  }
  const [width, , patchSize] = conv;

  let layers = 0;
  for (const k of sd.keys()) {
    const m = BLOCK_KEY.exec(k);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (layers === 0)
    throw invalid(
      `${source}checkpoint has no transformer blocks ("transformer.resblocks.0.*")`,
      "transformer.resblocks.0.attn.in_proj.weight",
    );

  const pos = shapeOf("positional_embedding");
  if (pos.length !== 2 || pos[1] !== width) {
    throw invalid(
      `${source}tensor "positional_embedding" has shape [${pos.join(", ")}], expected [tokens, ${width}]`,
      "positional_embedding",
    );
  }
  const gridSize = Math.round(Math.sqrt(pos[0] - 1));
  if (gridSize < 1 || gridSize * gridSize + 1 !== pos[0]) {
    throw invalid(
      `${source}tensor "positional_embedding" has ${pos[0]} tokens, which is not grid^2 + 1`,
      "positional_embedding",
    );
  }
  const proj = shapeOf("proj");
  if (proj.length !== 2 || proj[0] !== width) {
    throw invalid(
      `${source}tensor "proj" has shape [${proj.join(", ")}], expected [${width}, output_dim]`,
      "proj",
    );
  }
  const outputDim = proj[1];

  const heads = options.heads ?? width / 64;
  if (!Number.isInteger(heads) || heads < 1 || width % heads !== 0) {
    throw new RegionVqaError(
      "invalid_request",
      options.heads === undefined
        ? `width ${width} is not a multiple of 64, so the head count cannot be assumed: pass --heads`
        : `heads ${options.heads} does not divide width ${width}`,
    );
  }

  expectShape("conv1.weight", [width, 3, patchSize, patchSize]);
  expectShape("class_embedding", [width]);
  expectShape("positional_embedding", [gridSize * gridSize + 1, width]);
  expectShape("proj", [width, outputDim]);
  for (const ln of ["ln_pre", "ln_post"]) {
    expectShape(`${ln}.weight`, [width]);
    expectShape(`${ln}.bias`, [width]);
  }
  expectResidualBlocks(layers, width);

  const hasAlphaConv = sd.has("conv1_alpha.weight");
  if (hasAlphaConv) {
    expectShape("conv1_alpha.weight", [width, 1, patchSize, patchSize]);
  } else {
    warnings.push(
      'checkpoint has no "conv1_alpha.weight" (a plain CLIP visual encoder): using an all-zero alpha conv, so the region has no effect',
    );
  }

  return {
    config: {
      width,
      layers,
      heads,
      patchSize,
      imageSize: gridSize * patchSize,
      gridSize,
      outputDim,
      llavaFeatureLayer: layers - 1,
    },
    stateDict: sd,
    hasAlphaConv,
    warnings,
  };
}
