/**
 * The README's library example, run as it stands there: extracted from the "As a library" section and
 * executed in a child process that imports "region-vqa" through the package's own `exports` (the
 * compiled dist/, as an installed package would), on the bundled model.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { repoRoot } from "./support/tiny-models.js";

function readmeExample(): string {
  const readme = readFileSync(path.join(repoRoot, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## As a library"));
  const match = /```js\n([\s\S]*?)```/.exec(section);
  if (!match) throw new Error("README has no js block under 'As a library'");
  return match[1];
}

describe("the README's library example", () => {
  it("points package.json main, types and exports at files the build produced", () => {
    const pkg = JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8"));
    const targets = [pkg.main, pkg.types, pkg.exports["."].default, pkg.exports["."].types];
    for (const target of targets) expect(() => readFileSync(path.join(repoRoot, target))).not.toThrow();
  });

  it("answers 'red' about the red square through `import ... from \"region-vqa\"`", async () => {
    const code = readmeExample();
    expect(code).toMatch(/from "region-vqa"/);
    // Inside the package folder, "region-vqa" resolves to the package itself through its `exports`.
    const dir = path.join(repoRoot, "test", "artifacts");
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, "readme-library-example.mjs");
    writeFileSync(file, code);
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [file], {
      cwd: repoRoot,
      timeout: 120_000,
    });
    expect(stdout.trim().toLowerCase()).toMatch(/\bred\b/);
    // The library prints nothing of its own on stderr.
    expect(stderr).toBe("");
  });
});
