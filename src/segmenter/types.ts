/** Plain data of the segmenter stage: prompts in, masks and scores out. */
import type { Tensor } from "../common/tensor.js";
import type { Box, Mask, PointPrompt } from "../vision/types.js";

export type { PointPrompt };

/** What a person gave: clicks (label 1 include, 0 exclude) and/or a box, all in image pixels. */
export interface SegmentPrompt {
  points: PointPrompt[];
  box?: Box;
}

/**
 * `manifest.config` of a segmenter folder (kind "sam-segmenter"). Sizes come from here, never from
 * assumptions: the real SAM 2.1 export takes 1024 x 1024 images and returns 256 x 256 logits, the
 * bundled shapes segmenter 256 and 128.
 */
export interface SegmenterConfig {
  /** "sam2": SAM 2 / 2.1 exports (three image embeddings, boxes in the decoder). "sam1": SAM, SlimSAM. */
  family: "sam2" | "sam1";
  /** Side of the encoder's square input. */
  imageSize: number;
  /** "stretch": resize to imageSize x imageSize (SAM 2.1); "longest-side": scale the longest side to imageSize, pad bottom-right with zeros after normalising (SAM 1). */
  resize: "stretch" | "longest-side";
  /** Per-channel mean and std of pixel values scaled to 0..1. */
  mean: [number, number, number];
  std: [number, number, number];
  /** Side of the decoder's `pred_masks` logits. */
  maskSize: number;
  /** File names of the two graphs inside the folder. */
  encoder: string;
  decoder: string;
  [extra: string]: unknown;
}

/** How an image was mapped into the encoder's input frame (needed for prompts and for masks). */
export interface SamFrame {
  /** The original image. */
  width: number;
  height: number;
  /** The image's size inside the input frame (= imageSize x imageSize when stretched). */
  resizedWidth: number;
  resizedHeight: number;
  inputSize: number;
}

/** The encoder's outputs for one image, by output name (e.g. `image_embeddings.0`). */
export type ImageEmbeddings = Record<string, Tensor>;

/** One image's encoder outputs and their frame, as shared with other replicas. */
export interface SharedSegmenterEntry {
  frame: SamFrame;
  embeddings: ImageEmbeddings;
}

/**
 * A second tier of the image-embedding cache shared by replicas (`RedisSharedState`): an image encoded
 * on one replica is not encoded again on another, whichever replica a click lands on.
 */
export interface SharedSegmenterCache {
  readonly featureDtype: "fp16" | "fp32";
  getSegmenterEmbeddings(key: string): Promise<SharedSegmenterEntry | undefined>;
  putSegmenterEmbeddings(key: string, entry: SharedSegmenterEntry): Promise<void>;
}

export interface SegmentCandidate {
  /** The decoder's predicted IoU for this mask. */
  score: number;
  /** The mask at the image's size and its pixel count: always for the chosen one, for the others on request. */
  mask?: Mask;
  area?: number;
}

export interface SegmentOptions {
  /** The image's content key (e.g. a hash of its encoded bytes); default: a hash of its pixels. */
  imageKey?: string;
  /**
   * Upsample every candidate to the image's size, not only the chosen one (the upsampling costs about
   * as much as the decoder on photo-sized images, so it is skipped unless asked for).
   */
  allCandidates?: boolean;
}

export interface SegmentResult {
  /** The candidate with the highest predicted IoU. */
  mask: Mask;
  score: number;
  /** Pixels inside `mask`. */
  area: number;
  /** Which candidate `mask` is. */
  index: number;
  /** Every candidate mask, in the decoder's order. */
  candidates: SegmentCandidate[];
  /** SAM 2's `object_score_logits` (> 0: the prompt hits an object), when the model has it. */
  objectScore?: number;
  timings: { encodeMs: number; decodeMs: number; postprocessMs: number; embeddingsCached: boolean };
}
