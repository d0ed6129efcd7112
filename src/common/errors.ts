/**
 * Typed errors with a stable machine-readable `code`. Every stage throws these for bad input or
 * bad files; `src/api` maps codes to HTTP statuses in one place (see `httpStatusFor`).
 */
export type ErrorCode =
  // input images and regions
  | "image_missing"
  | "image_undecodable"
  | "image_too_large"
  | "image_too_many_pixels"
  | "mask_undecodable"
  | "mask_size_mismatch"
  | "region_empty"
  | "region_invalid"
  | "box_invalid"
  | "polygon_invalid"
  | "rle_invalid"
  | "too_many_regions"
  // point prompts and the segmenter (src/segmenter)
  | "point_invalid"
  | "point_outside_image"
  | "too_many_points"
  | "segment_empty"
  | "segmenter_not_installed"
  // labels and text (zero-shot classification, embeddings)
  | "labels_invalid"
  | "too_many_labels"
  | "too_many_inputs"
  | "label_too_long"
  | "embedding_mismatch"
  | "text_model_not_installed"
  // requests
  | "invalid_request"
  | "route_not_found"
  | "question_too_long"
  | "conversation_not_found"
  | "conversation_exists"
  | "context_full"
  | "unauthorized"
  | "payload_too_large"
  | "unsupported_media_type"
  | "remote_fetch_forbidden"
  | "overloaded"
  | "timeout"
  | "aborted"
  // models and files
  | "checkpoint_invalid"
  | "model_invalid"
  | "model_not_found"
  | "model_mismatch"
  | "device_unavailable"
  | "device_failed"
  | "native_incompatible"
  | "download_failed"
  | "checksum_mismatch"
  | "internal";

export class RegionVqaError extends Error {
  readonly code: ErrorCode;
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = "RegionVqaError";
    this.code = code;
    this.details = details;
  }
}

export function isRegionVqaError(err: unknown): err is RegionVqaError {
  return err instanceof RegionVqaError;
}

/** The one place where error codes become HTTP statuses. */
export function httpStatusFor(code: ErrorCode): number {
  switch (code) {
    case "unauthorized":
      return 401;
    case "remote_fetch_forbidden":
      return 403;
    case "conversation_not_found":
    case "route_not_found":
    case "model_not_found":
      return 404;
    case "timeout":
      return 408;
    case "conversation_exists":
      return 409;
    case "payload_too_large":
    case "image_too_large":
      return 413;
    case "unsupported_media_type":
      return 415;
    // device_failed: a GPU that failed or hung mid-run. The server cannot serve now; later (or
    // another replica) may.
    case "overloaded":
    case "device_failed":
      return 503;
    case "aborted":
      return 499;
    case "checkpoint_invalid":
    case "model_invalid":
    case "model_mismatch":
    case "device_unavailable":
    case "native_incompatible":
    case "download_failed":
    case "checksum_mismatch":
    case "internal":
      return 500;
    default:
      return 400;
  }
}
