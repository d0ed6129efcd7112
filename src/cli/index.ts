import { readFileSync } from "node:fs";
import { Command } from "commander";
import { RegionVqaError } from "../common/errors.js";

/** Each command lives in `./commands/<name>.ts` and adds itself to the program. */
type CommandModule = { register(program: Command): void };
const commandModules: Array<() => Promise<CommandModule>> = [
  () => import("./commands/encode.js"),
  () => import("./commands/ask.js"),
  () => import("./commands/segment.js"),
  () => import("./commands/pull.js"),
  () => import("./commands/models.js"),
  () => import("./commands/convert-vision.js"),
  () => import("./commands/convert-projector.js"),
  () => import("./commands/convert-text.js"),
  () => import("./commands/embed-text.js"),
  () => import("./commands/serve.js"),
  () => import("./commands/eval-shapes.js"),
  () => import("./commands/eval-segment.js"),
  () => import("./commands/classify.js"),
  () => import("./commands/eval-classify.js"),
  () => import("./commands/devices.js"),
];

/** The package's version; package.json sits two levels up from both src/cli and dist/cli. */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version: string;
  };
  return pkg.version;
}

export async function main(argv: string[]): Promise<number> {
  const program = new Command("region-vqa")
    .description("Ask questions about a region of an image (Alpha-CLIP + LLaVA-1.5)")
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride();
  for (const load of commandModules) (await load()).register(program);
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === "string" && e.code.startsWith("commander.")) return e.exitCode ?? 1;
    if (err instanceof RegionVqaError) {
      console.error(`region-vqa: ${err.message} [${err.code}]`);
      return 2;
    }
    console.error(err);
    return 1;
  }
}
