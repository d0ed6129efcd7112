import { Command } from "commander";
import {
  DEFAULT_CATALOG,
  defaultModelsDir,
  formatBytes,
  knownSize,
  listInstalledModels,
  modelRoots,
  variantFiles,
  type InstalledEntry,
} from "../../models/index.js";

/** `region-vqa models`: what is installed (and complete), or with --available what can be pulled. */
export function register(program: Command): void {
  program
    .command("models")
    .description(
      "list installed models (sizes, complete or not, licences); --available lists what `pull` can fetch",
    )
    .option("--dir <dir>", `models folder (default: $REGION_VQA_MODELS_DIR or ${defaultModelsDir()})`)
    .option("--available", "list the catalogue instead: presets, models, variants, files and sizes")
    .option("--verify", "re-hash every file against its manifest (reads every byte)")
    .option("--json", "print JSON")
    .action(async (opts: { dir?: string; available?: boolean; verify?: boolean; json?: boolean }) => {
      if (opts.available) {
        process.stdout.write(opts.json ? `${JSON.stringify(DEFAULT_CATALOG, null, 2)}\n` : catalogueText());
        return;
      }
      const roots = modelRoots(opts.dir);
      const entries = await listInstalledModels({ roots, verifyHashes: opts.verify });
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ roots, models: entries }, null, 2)}\n`);
        return;
      }
      process.stdout.write(installedText(roots, entries));
    });
}

function installedText(roots: string[], entries: InstalledEntry[]): string {
  const lines: string[] = [];
  for (const root of roots) {
    const here = entries.filter((e) => e.root === root);
    lines.push(`${root}${here.length ? "" : "  (nothing installed)"}`);
    if (!here.length) continue;
    const rows = here.map((e) => [
      e.name,
      e.kind,
      e.detail ?? "",
      formatBytes(e.bytes),
      e.complete ? "complete" : "INCOMPLETE",
      e.licence ?? "",
    ]);
    const widths = [0, 1, 2, 3, 4].map((i) => Math.max(...rows.map((r) => r[i].length), 4));
    for (const [i, row] of rows.entries()) {
      const last = row[5] ? `${row[4].padEnd(widths[4])}  ${row[5]}` : row[4];
      lines.push(
        `  ${row
          .slice(0, 4)
          .map((c, j) => c.padEnd(widths[j]))
          .join("  ")}  ${last}`,
      );
      for (const problem of here[i].problems) lines.push(`      - ${problem}`);
    }
  }
  return `${lines.join("\n")}\n`;
}

/** What `models --available` prints: presets, then each model with its licence, variants and files. */
export function catalogueText(): string {
  const lines: string[] = ["Presets (serve --model NAME):"];
  for (const p of DEFAULT_CATALOG.presets) {
    lines.push(`  ${p.name}  ${p.description}`);
    const parts = [p.vision, p.llm, ...(p.segmenter ? [p.segmenter] : []), ...(p.text ? [p.text] : [])];
    lines.push(
      `    pulls: ${parts.map((part) => part.model + (part.variant ? ` (${part.variant})` : "")).join(", ")}`,
    );
  }
  lines.push("", "Models (pull NAME; pick a variant with --variant or --quant):");
  for (const m of DEFAULT_CATALOG.models) {
    lines.push(`  ${m.name}  ${m.description}`);
    lines.push(`    licence: ${m.licence ?? "not recorded"}${m.homepage ? `  (${m.homepage})` : ""}`);
    for (const key of Object.keys(m.variants)) {
      const files = variantFiles(m, key).map((f) => {
        const size = knownSize(f);
        const sizeText =
          size === undefined ? "size unknown" : `${f.bytes === undefined ? "~" : ""}${formatBytes(size)}`;
        const ranged = f.textApproxBytes
          ? `; its text tower, ~${formatBytes(f.textApproxBytes)}, is fetched by Range`
          : "";
        return `${f.file} (${sizeText}${f.sha256 ? ", sha256 known" : ""}${ranged})`;
      });
      const flag = m.variantFlag === "quant" ? "--quant" : "--variant";
      lines.push(`    ${flag} ${key}${key === m.defaultVariant ? " (default)" : ""}: ${files.join(", ")}`);
    }
  }
  return `${lines.join("\n")}\n`;
}
