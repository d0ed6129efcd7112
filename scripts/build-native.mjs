#!/usr/bin/env node
// Builds the three small N-API addons:
// - native/embd_addon.cc, which lets region-vqa feed embedding rows into a node-llama-cpp context;
// - native/gpu_probe.cc, which lists the host's Vulkan devices (the adapters WebGPU can use);
// - native/imaging.cc, the CPU image kernels (Pillow-exact resizes, masks) run off the event loop
//   (without it, src/common/imaging falls back to the TypeScript specifications on the main thread).
// The first is one g++ call against:
//   - node-addon-api + node-api-headers (npm dependencies),
//   - llama.cpp's public headers, taken from the exact llama.cpp release that node-llama-cpp bundles
//     (node_modules/node-llama-cpp/llama/gitRelease.bundle), so struct layouts match its binaries,
//   - node-llama-cpp's own addon headers (llama/addon/), which declare the AddonContext class layout.
// The addon is not linked to libllama; it finds the copy node-llama-cpp loaded at run time.
//
// Usage: node scripts/build-native.mjs [--force]
// Environment: CXX (compiler, default g++), REGION_VQA_SKIP_NATIVE=1 (skip, e.g. on machines that will
// never run the LLM; the LLM then refuses to load with a clear error).
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const source = path.join(repoRoot, "native", "embd_addon.cc");
const buildDir = path.join(repoRoot, "build");
const output = path.join(buildDir, "Release", "region_vqa_embd.node");
const probeSource = path.join(repoRoot, "native", "gpu_probe.cc");
const probeOutput = path.join(buildDir, "Release", "region_vqa_gpu_probe.node");
const imagingSource = path.join(repoRoot, "native", "imaging.cc");
const imagingOutput = path.join(buildDir, "Release", "region_vqa_imaging.node");
const force = process.argv.includes("--force");

function fail(message) {
  console.error(`build-native: ${message}`);
  process.exit(1);
}

if (process.env.REGION_VQA_SKIP_NATIVE === "1") {
  console.error("build-native: skipped (REGION_VQA_SKIP_NATIVE=1); the LLM stage will not be usable");
  process.exit(0);
}
if (process.platform !== "linux") {
  fail(
    `the embeddings addon supports Linux only (it finds libllama with dl_iterate_phdr); this is ${process.platform}. ` +
      "Set REGION_VQA_SKIP_NATIVE=1 to install without the LLM stage.",
  );
}

const require = createRequire(import.meta.url);
function packageDir(name) {
  // node-llama-cpp exports no ./package.json; walk up from its resolved entry point instead.
  let dir = path.dirname(require.resolve(name));
  while (
    !existsSync(path.join(dir, "package.json")) ||
    JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")).name !== name
  ) {
    const parent = path.dirname(dir);
    if (parent === dir) fail(`cannot locate the package directory of ${name}`);
    dir = parent;
  }
  return dir;
}

let llamaCppDir, addonApiDir, apiHeadersDir;
try {
  llamaCppDir = packageDir("node-llama-cpp");
  addonApiDir = path.dirname(require.resolve("node-addon-api/package.json"));
  apiHeadersDir = path.dirname(require.resolve("node-api-headers/package.json"));
} catch (err) {
  fail(`a build dependency is missing (${err.message}); run npm install`);
}
const addonHeadersDir = path.join(llamaCppDir, "llama", "addon");
const bundle = path.join(llamaCppDir, "llama", "gitRelease.bundle");
const releaseInfo = JSON.parse(readFileSync(path.join(llamaCppDir, "llama", "llama.cpp.info.json"), "utf8"));
const compiler = process.env.CXX || "g++";

const probe = spawnSync(compiler, ["--version"], { encoding: "utf8" });
if (probe.error || probe.status !== 0) {
  fail(
    `C++ compiler '${compiler}' not found. Install one (Debian/Ubuntu: apt-get install g++) or set CXX, ` +
      "then run `npm run build:native`.",
  );
}
if (!existsSync(bundle)) fail(`llama.cpp source bundle not found at ${bundle}`);

// Extract the headers once per bundled release (keyed by the bundle's commit).
const bundleHead = execFileSync("git", ["bundle", "list-heads", bundle], { encoding: "utf8" })
  .trim()
  .split(/\s+/)[0];
if (!/^[0-9a-f]{40}$/.test(bundleHead ?? "")) fail(`cannot read the head commit of ${bundle}`);
const headersDir = path.join(buildDir, "llama.cpp", bundleHead);
const headersStamp = path.join(headersDir, ".complete");
if (!existsSync(headersStamp)) {
  const repoTmp = path.join(buildDir, "llama.cpp", `${bundleHead}.git`);
  rmSync(repoTmp, { recursive: true, force: true });
  rmSync(headersDir, { recursive: true, force: true });
  mkdirSync(headersDir, { recursive: true });
  console.error(`build-native: extracting llama.cpp ${releaseInfo.tag} headers from the bundled sources`);
  execFileSync("git", ["clone", "--quiet", "--bare", bundle, repoTmp], { stdio: "inherit" });
  const tar = execFileSync(
    "git",
    ["--git-dir", repoTmp, "archive", "--format=tar", bundleHead, "include", "ggml/include"],
    {
      maxBuffer: 64 * 1024 * 1024,
    },
  );
  execFileSync("tar", ["-x", "-C", headersDir], { input: tar });
  rmSync(repoTmp, { recursive: true, force: true });
  writeFileSync(headersStamp, `${releaseInfo.tag} ${bundleHead}\n`);
}

/** Compiles `src` into the addon `out` unless `out` is newer than every input (or --force). */
function compile(src, out, inputs, includeDirs, what, flags = ["-O2"]) {
  if (!force && existsSync(out)) {
    const built = statSync(out).mtimeMs;
    if ([src, ...inputs].every((file) => statSync(file).mtimeMs <= built)) {
      console.error(`build-native: ${path.basename(out)} is up to date`);
      return;
    }
  }
  mkdirSync(path.dirname(out), { recursive: true });
  const args = [
    "-std=c++17",
    ...flags,
    "-fPIC",
    "-shared",
    "-fexceptions",
    "-fvisibility=hidden",
    // Same N-API level as node-llama-cpp's addon (its CMakeLists.txt), so napi.h declares the same classes.
    "-DNAPI_VERSION=7",
    "-DNODE_ADDON_API_CPP_EXCEPTIONS",
    `-I${addonApiDir}`,
    `-I${path.join(apiHeadersDir, "include")}`,
    ...includeDirs.map((dir) => `-I${dir}`),
    src,
    "-o",
    out,
    "-ldl",
  ];
  const started = Date.now();
  console.error(`build-native: compiling ${path.relative(repoRoot, src)}${what}`);
  const result = spawnSync(compiler, args, { stdio: "inherit" });
  if (result.status !== 0) fail(`${compiler} failed (exit ${result.status})`);
  console.error(
    `build-native: wrote ${path.relative(repoRoot, out)} in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
}

compile(
  source,
  output,
  [path.join(addonHeadersDir, "AddonContext.h"), path.join(addonHeadersDir, "AddonModel.h"), headersStamp],
  [path.join(headersDir, "include"), path.join(headersDir, "ggml", "include"), addonHeadersDir],
  ` (llama.cpp ${releaseInfo.tag})`,
);
compile(probeSource, probeOutput, [], [], "");
// -O3 for the vectorised loops; no fused multiply-adds, which would round differently from the
// TypeScript specifications (and from Pillow / PyTorch); threads for large images.
compile(imagingSource, imagingOutput, [], [], "", ["-O3", "-ffp-contract=off", "-pthread"]);
