import { RegionVqaError } from "../common/errors.js";

/**
 * A numeric flag's text -> its value, checked against a range (and whole-number-ness) before any
 * model loads, so that a typo fails at once with the flag's name rather than after minutes of loading.
 */
export function numberFlag(
  value: string | undefined,
  flag: string,
  { min, max = Infinity, integer = false }: { min: number; max?: number; integer?: boolean },
): number | undefined {
  if (value === undefined) return undefined;
  const n = value.trim() === "" ? NaN : Number(value);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    const range = max === Infinity ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new RegionVqaError(
      "invalid_request",
      `${flag} must be ${integer ? "an integer" : "a number"} ${range}, got "${value}"`,
    );
  }
  return n;
}
