import { describe, expect, it } from "vitest";
import { httpStatusFor, RegionVqaError } from "../src/common/errors.js";

describe("error codes", () => {
  it("maps input errors to 4xx and model faults to 5xx", () => {
    expect(httpStatusFor("region_empty")).toBe(400);
    expect(httpStatusFor("payload_too_large")).toBe(413);
    expect(httpStatusFor("conversation_not_found")).toBe(404);
    expect(httpStatusFor("overloaded")).toBe(503);
    expect(httpStatusFor("device_failed")).toBe(503);
    expect(httpStatusFor("model_invalid")).toBe(500);
    const e = new RegionVqaError("box_invalid", "box x2 must exceed x1");
    expect(e.code).toBe("box_invalid");
    expect(e).toBeInstanceOf(Error);
  });
});
