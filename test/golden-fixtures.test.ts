/**
 * The golden data is only as good as its provenance: every file a fixture README lists must be present
 * with the sha256 it states, and every file in those folders must be listed (nothing unexplained).
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { goldenDir } from "./support/tiny-models.js";

/** `| \`file\` | [what it is |] \`sha256\` |` rows of a README table. */
function listedHashes(readme: string): Map<string, string> {
  const rows = new Map<string, string>();
  for (const line of readFileSync(readme, "utf8").split("\n")) {
    const m = /^\| `([^`]+)` \|(?:.*\|)? `([0-9a-f]{64})` \|$/.exec(line);
    if (m) rows.set(m[1], m[2]);
  }
  return rows;
}

const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

describe("golden fixtures", () => {
  for (const folder of [
    "",
    "alpha-clip-tiny",
    "llava-projector-tiny",
    "clip-text-tiny",
    "clip-tokenizer",
    "mini-sam",
    "pillow-12mp",
  ]) {
    it(`${folder || "top level"}: every file is listed with its true sha256`, () => {
      const dir = path.join(goldenDir, folder);
      const listed = listedHashes(path.join(dir, "README.md"));
      expect(listed.size).toBeGreaterThan(0);
      const present = readdirSync(dir).filter(
        (f) => f !== "README.md" && statSync(path.join(dir, f)).isFile(),
      );
      expect([...listed.keys()].sort()).toEqual(present.sort());
      for (const [file, hash] of listed) expect(sha256(path.join(dir, file)), file).toBe(hash);
    });
  }
});
