/**
 * Input limits shared by the pipeline (for library callers) and the API (which checks a request before
 * it queues): one default, one check and one `details` shape per limit.
 */
import { RegionVqaError } from "./errors.js";

export const DEFAULT_MAX_REGIONS = 16;
export const DEFAULT_MAX_QUESTION_CHARS = 2000;

/** A non-empty question of at most `maxChars` characters, trimmed. */
export function checkQuestion(question: unknown, maxChars: number, field = "question"): string {
  if (typeof question !== "string" || question.trim() === "") {
    throw new RegionVqaError("invalid_request", `The ${field} is missing or empty.`);
  }
  if (question.length > maxChars) {
    throw new RegionVqaError(
      "question_too_long",
      `The ${field} has ${question.length} characters; the limit is ${maxChars}.`,
      { chars: question.length, maxChars },
    );
  }
  return question.trim();
}

/** At most `maxRegions` regions in one request. */
export function checkRegionCount(regions: number, maxRegions: number): void {
  if (regions > maxRegions) {
    throw new RegionVqaError(
      "too_many_regions",
      `The request has ${regions} regions; the limit is ${maxRegions}.`,
      { regions, maxRegions },
    );
  }
}
