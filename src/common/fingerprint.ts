/**
 * Content fingerprints of model files and folders: the same model gets the same fingerprint wherever
 * it is installed, and a file replaced in place gets a new one. Replicas compare them before they
 * share cached embeddings or continue each other's conversations.
 */
import { createHash } from "node:crypto";
import { open, readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";

const SAMPLE_BYTES = 1 << 20;

/**
 * A file: its size and sha256 of its first and last MiB (GGUF and ONNX files differ in their headers
 * and tensors there; hashing gigabytes at every start would cost minutes). A folder: its manifest.json
 * (which lists its files' sha256) or, without one, its files' names and fingerprints.
 */
export async function modelFingerprint(target: string): Promise<string> {
  const info = await stat(target);
  const hash = createHash("sha256");
  if (info.isDirectory()) {
    const manifest = await readFile(path.join(target, "manifest.json")).catch(() => undefined);
    if (manifest) {
      hash.update("manifest:").update(manifest);
    } else {
      for (const name of (await readdir(target)).sort()) {
        hash.update(`${name}:${await modelFingerprint(path.join(target, name))};`);
      }
    }
    return hash.digest("hex");
  }
  hash.update(`size:${info.size};`);
  const file = await open(target, "r");
  try {
    const head = Buffer.alloc(Math.min(SAMPLE_BYTES, info.size));
    await file.read(head, 0, head.length, 0);
    hash.update(head);
    if (info.size > SAMPLE_BYTES) {
      const tail = Buffer.alloc(Math.min(SAMPLE_BYTES, info.size - SAMPLE_BYTES));
      await file.read(tail, 0, tail.length, info.size - tail.length);
      hash.update(tail);
    }
  } finally {
    await file.close();
  }
  return hash.digest("hex");
}
