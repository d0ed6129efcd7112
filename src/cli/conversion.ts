/**
 * What `convert-vision` and `convert-text` share: the checkpoint -> model folder flags, the refusal to
 * overwrite a model without --force, the progress logger and the summary line.
 */
import fs from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { RegionVqaError } from "../common/errors.js";
import type { ModelManifest } from "../common/manifest.js";
import { numberFlag } from "./number-flag.js";

/** The flags every converter takes, as commander hands them over. */
export interface ConversionCliOptions {
  checkpoint: string;
  out: string;
  heads?: number;
  precision: "fp32" | "fp16";
  name?: string;
  force?: boolean;
  json?: boolean;
}

/** Adds --checkpoint, --out, --heads, --precision and --name (the command's own flags come after). */
export function addConversionOptions(cmd: Command, help: { checkpoint: string; out: string }): Command {
  return cmd
    .requiredOption("--checkpoint <file>", help.checkpoint)
    .requiredOption("--out <dir>", help.out)
    .option(
      "--heads <n>",
      "attention heads (not stored in checkpoints; default width / 64)",
      (value: string) => numberFlag(value, "--heads", { min: 1, integer: true })!,
    )
    .addOption(
      new Option("--precision <p>", "weight precision in the ONNX file")
        .choices(["fp32", "fp16"])
        .default("fp32"),
    )
    .option("--name <name>", "model name for the manifest (default: the folder name)");
}

/** Refuses to write over a folder that already holds a model, unless --force. */
export function refuseExistingModel(opts: ConversionCliOptions): void {
  if (!opts.force && fs.existsSync(path.join(opts.out, "manifest.json"))) {
    throw new RegionVqaError(
      "invalid_request",
      `${opts.out} already holds a model (manifest.json); pass --force to overwrite`,
    );
  }
}

/** The converters' progress and warnings, on stderr. */
export const stderrLogger = {
  info: (m: string): void => void process.stderr.write(`${m}\n`),
  warn: (m: string): void => void process.stderr.write(`warning: ${m}\n`),
};

/** The manifest as JSON (--json), or one summary line: folder, kind, precision, `architecture`, files, time. */
export function printConversion(
  opts: ConversionCliOptions,
  manifest: ModelManifest<unknown>,
  architecture: string,
  startedAt: number,
): void {
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(manifest, null, 2)}\n`);
    return;
  }
  const files = manifest.files.map((f) => `${f.path} ${(f.bytes / 1e6).toFixed(1)} MB`).join(", ");
  process.stdout.write(
    `${path.resolve(opts.out)}: ${manifest.kind} "${manifest.name}" (${manifest.precision}; ${architecture}); ` +
      `${files}; ${((Date.now() - startedAt) / 1000).toFixed(1)} s\n`,
  );
}
