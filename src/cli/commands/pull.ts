import { Command, Option } from "commander";
import {
  createProgressPrinter,
  defaultModelsDir,
  formatBytes,
  pullModel,
  type PullResult,
} from "../../models/index.js";
import { numberFlag } from "../number-flag.js";

/** `region-vqa pull NAME`: download, verify and convert a model or preset (progress on stderr). */
export function register(program: Command): void {
  program
    .command("pull")
    .description("download, verify and convert a model or preset into the models folder")
    .argument(
      "<name>",
      "preset (alpha-llava-7b) or model (alpha-clip-l14-336, llava-v1.5-7b, sam2.1-tiny, slimsam-77, " +
        "clip-text-l14-336); see `models --available`",
    )
    .option("--quant <quant>", "LLM quantisation, e.g. Q4_K_M (default), Q5_K_M, Q8_0")
    .option(
      "--variant <variant>",
      "Alpha-CLIP checkpoint: grit-20m (default) or grit-1m (the official LLaVA demo's); " +
        "for a segmenter: fp32 (default), fp16, or quantized (slimsam-77); " +
        "for clip-text-l14-336: openai (default), hf or hf-safetensors",
    )
    .option("--segmenter-variant <variant>", "with a preset: the segmenter's variant (default fp32)")
    .option("--no-segmenter", "with a preset: do not pull its segmenter")
    .option("--text-variant <variant>", "with a preset: the CLIP text tower's variant (default openai)")
    .option("--no-text", "with a preset: do not pull its CLIP text tower")
    .option(
      "--whole-file",
      "text towers: download the whole CLIP checkpoint (sha256-checked where known) instead of only the " +
        "text tower's bytes with Range requests",
    )
    .option("--dir <dir>", `models folder (default: $REGION_VQA_MODELS_DIR or ${defaultModelsDir()})`)
    .addOption(
      new Option("--precision <precision>", "weights of the converted vision model and text tower").choices([
        "fp32",
        "fp16",
      ]),
    )
    .option(
      "--keep-source",
      "keep the downloaded checkpoint after converting it (a .pth, or a whole CLIP file with --whole-file)",
    )
    .option("--verify", "re-hash files that are already installed")
    .option("--retries <n>", "automatic resumptions after a dropped connection", "3")
    .option("--quiet", "no progress output")
    .addHelpText(
      "after",
      `
Environment:
  REGION_VQA_MODELS_DIR          models folder (like --dir)
  REGION_VQA_HF_TOKEN, HF_TOKEN  Hugging Face token, sent as a Bearer token to the Hugging Face host only
  REGION_VQA_BASE_URL_HF         base URL replacing https://huggingface.co (a mirror; HF_ENDPOINT also works)
  REGION_VQA_BASE_URL_OPENXLAB   base URL replacing https://download.openxlab.org.cn
  REGION_VQA_BASE_URL_OPENAI     base URL replacing https://openaipublic.azureedge.net (OpenAI's CLIP files)
  REGION_VQA_MIRROR_<HOST>       the same by host name, e.g. REGION_VQA_MIRROR_HUGGINGFACE_CO

Interrupted downloads resume where they stopped: run the same command again. A CLIP text tower is
fetched with Range requests (only its bytes; zip entries CRC-32-checked), or whole with --whole-file.`,
    )
    .action(async (name: string, opts: PullCliOptions) => {
      const retries = numberFlag(opts.retries, "--retries", { min: 0, integer: true })!;
      const printer = createProgressPrinter(process.stderr);
      const controller = new AbortController();
      const onSigint = () => controller.abort();
      process.once("SIGINT", onSigint);
      try {
        const result = await pullModel(name, {
          modelsDir: opts.dir,
          quant: opts.quant,
          variant: opts.variant,
          segmenterVariant: opts.segmenterVariant,
          segmenter: opts.segmenter,
          textVariant: opts.textVariant,
          text: opts.text,
          wholeFile: opts.wholeFile,
          precision: opts.precision,
          keepSource: opts.keepSource,
          verify: opts.verify,
          retries,
          signal: controller.signal,
          onProgress: opts.quiet ? undefined : (p) => printer.update(p),
          onLog: opts.quiet ? undefined : (m) => printer.log(m),
        });
        process.stdout.write(summary(result));
      } finally {
        process.off("SIGINT", onSigint);
      }
    });
}

interface PullCliOptions {
  quant?: string;
  variant?: string;
  segmenterVariant?: string;
  /** False with --no-segmenter. */
  segmenter: boolean;
  textVariant?: string;
  /** False with --no-text. */
  text: boolean;
  wholeFile?: boolean;
  dir?: string;
  precision?: "fp32" | "fp16";
  keepSource?: boolean;
  verify?: boolean;
  retries: string;
  quiet?: boolean;
}

function summary(result: PullResult): string {
  const lines: string[] = [];
  const downloaded = result.files.filter((f) => !f.skipped);
  const bytes = downloaded.reduce((sum, f) => sum + f.bytes - f.resumedFrom, 0);
  const converted = result.models.filter((m) => m.converted).map((m) => m.name);
  lines.push(
    `${result.name}: ready in ${result.modelsDir} (${downloaded.length} file(s) downloaded, ${formatBytes(bytes)}` +
      `${converted.length ? `, converted ${converted.join(", ")}` : ""})`,
  );
  for (const f of downloaded) {
    if (!f.ranges) continue;
    lines.push(
      `  ${f.file}: only the text tower fetched, ${formatBytes(f.bytes)} of ${formatBytes(f.ranges.fileBytes)} ` +
        `(${f.requests} Range requests; verified: ${f.ranges.verified})`,
    );
  }
  if (result.preset) {
    lines.push(`  vision     ${result.preset.visionDir}`);
    lines.push(`  projector  ${result.preset.projectorPath}`);
    lines.push(`  llm        ${result.preset.llmPath}`);
    if (result.preset.segmenterDir) lines.push(`  segmenter  ${result.preset.segmenterDir}`);
    if (result.preset.textDir) lines.push(`  text       ${result.preset.textDir}`);
  } else {
    for (const folder of result.folders) lines.push(`  ${folder}`);
  }
  lines.push(...licenceLines(result));
  if (result.preset) lines.push(`Start the server with: region-vqa serve --model ${result.name}`);
  return `${lines.join("\n")}\n`;
}

/** The licence of each model pulled: one line for one model, a list for a preset. */
function licenceLines(result: PullResult): string[] {
  const licence = (m: PullResult["models"][number]) => m.licence ?? "not recorded (see the model's homepage)";
  if (result.models.length === 1) return [`Licence: ${licence(result.models[0])}`];
  const width = Math.max(...result.models.map((m) => m.name.length));
  return ["Licences:", ...result.models.map((m) => `  ${m.name.padEnd(width)}  ${licence(m)}`)];
}
