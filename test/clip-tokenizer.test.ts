/**
 * The CLIP BPE tokenizer port against the reference's own output (test/fixtures/golden/clip-tokenizer):
 * every golden case step by step (cleanup, pieces, BPE symbols, ids, both 77-id rows, decode), the
 * special tokens, the cache, decode round trips and over-long texts.
 */
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { httpStatusFor, RegionVqaError } from "../src/common/errors.js";
import { fixText, htmlUnescape } from "../src/text/ftfy-lite.js";
import {
  CLIP_CONTEXT_LENGTH,
  CLIP_TOKENIZER_VOCAB_SIZE,
  ClipTokenizer,
  cleanClipText,
  clipPieces,
  clipTokenizerVocabPath,
} from "../src/text/tokenizer.js";

const fixtureDir = fileURLToPath(new URL("./fixtures/golden/clip-tokenizer/", import.meta.url));
const fixtureVocab = path.join(fixtureDir, "bpe_simple_vocab_16e6.txt.gz");

interface GoldenCase {
  id: number;
  category: string;
  text: string;
  ftfy: string;
  after_html_unescape: string;
  cleaned: string;
  pieces: string[];
  bpe: string[];
  ids: number[];
  n_tokens_with_sot_eot: number;
  fits_context: boolean;
  tokenize_truncate_true: number[];
  tokenize_truncate_false: number[] | null;
  decoded: string;
}

const golden = JSON.parse(readFileSync(path.join(fixtureDir, "cases.json"), "utf8")) as {
  special_tokens: Record<string, number>;
  vocab_size: number;
  context_length: number;
  pad_id: number;
  cases: GoldenCase[];
};
const cases = golden.cases;
const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");
const label = (c: GoldenCase) => `#${c.id} ${c.category}: ${JSON.stringify(c.text).slice(0, 50)}`;
const isAscii = (s: string) => /^[\x20-\x7e]*$/.test(s);

let tok: ClipTokenizer;
let loadMs = 0;

beforeAll(async () => {
  const t0 = performance.now();
  tok = await ClipTokenizer.load();
  loadMs = performance.now() - t0;
});

describe("CLIP tokenizer: files and vocabulary", () => {
  it("ships the reference merges file with its licence", () => {
    const shipped = clipTokenizerVocabPath();
    expect(sha256(shipped)).toBe(sha256(fixtureVocab));
    expect(sha256(shipped)).toBe("924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a");
    expect(readFileSync(path.join(path.dirname(shipped), "LICENSE-openai-CLIP.txt"), "utf8")).toContain(
      "Copyright (c) 2021 OpenAI",
    );
  });

  it("has 49408 ids with SOT 49406 and EOT 49407, as the golden file states", () => {
    expect(tok.vocabSize).toBe(CLIP_TOKENIZER_VOCAB_SIZE);
    expect(tok.vocabSize).toBe(golden.vocab_size);
    expect(CLIP_CONTEXT_LENGTH).toBe(golden.context_length);
    expect(tok.sotId).toBe(golden.special_tokens["<|startoftext|>"]);
    expect(tok.eotId).toBe(golden.special_tokens["<|endoftext|>"]);
    expect(golden.pad_id).toBe(0);
  });

  it("turns the special tokens' text into their ids, in any case, and skips BPE for them", () => {
    expect(tok.encode("<|startoftext|>")).toEqual([49406]);
    expect(tok.encode("<|endoftext|>")).toEqual([49407]);
    expect(tok.encode("<|EndOfText|>")).toEqual([49407]);
    expect(tok.bpeSymbols("x <|endoftext|>")).toEqual(["x</w>", "<|endoftext|>"]);
    expect(tok.decode([49406, 320, 49407])).toBe("<|startoftext|>a <|endoftext|>");
    // A row always starts with SOT and holds an EOT, even for empty text.
    expect(Array.from(tok.tokenize("").data.slice(0, 3))).toEqual([49406, 49407, 0]);
  });

  it("reproduces the byte table: single bytes are ids 0-255, with </w> 256-511", () => {
    // "!" is the first printable byte: id 0, and 256 with </w>.
    expect(tok.encode("!")).toEqual([256]);
    expect(tok.decode([0, 256])).toBe("!! ");
    // The 188 printable bytes come first (ids 0-187), then the 68 others in byte order: 0x00 is 188,
    // the space 220; a lone 0xFF (id 187) is not UTF-8 and decodes as U+FFFD, like errors="replace".
    expect(tok.decode([188, 220])).toBe("\u0000 ");
    expect(tok.decode([187])).toBe("\ufffd");
  });
});

describe("CLIP tokenizer: golden cases", () => {
  it.each(cases.map((c) => [label(c), c] as const))("%s", (_name, c) => {
    // Each step, so that a failure names the step that differs.
    expect(fixText(c.text), "ftfy").toBe(c.ftfy);
    expect(htmlUnescape(htmlUnescape(c.ftfy)), "html.unescape twice").toBe(c.after_html_unescape);
    expect(cleanClipText(c.text), "cleaned").toBe(c.cleaned);
    expect(clipPieces(c.cleaned), "pieces").toEqual(c.pieces);
    expect(tok.bpeSymbols(c.text), "bpe").toEqual(c.bpe);
    expect(tok.encode(c.text), "ids").toEqual(c.ids);
    expect(c.ids.length + 2).toBe(c.n_tokens_with_sot_eot);

    const cut = tok.tokenize(c.text, { truncate: true });
    expect(cut.shape).toEqual([1, 77]);
    expect(cut.data).toBeInstanceOf(Int32Array);
    expect(Array.from(cut.data), "tokenize truncate=true").toEqual(c.tokenize_truncate_true);

    if (c.tokenize_truncate_false === null) {
      expect(c.fits_context).toBe(false);
      expect(() => tok.tokenize(c.text)).toThrow(RegionVqaError);
    } else {
      expect(Array.from(tok.tokenize(c.text).data), "tokenize truncate=false").toEqual(
        c.tokenize_truncate_false,
      );
    }
    expect(tok.decode(c.ids), "decode").toBe(c.decoded);
  });

  it("tokenizes a batch into one [N, 77] int32 array, row for row as the golden", () => {
    const batch = tok.tokenize(
      cases.map((c) => c.text),
      { truncate: true },
    );
    expect(batch.shape).toEqual([cases.length, 77]);
    cases.forEach((c, row) => {
      expect(Array.from(batch.data.subarray(row * 77, (row + 1) * 77)), label(c)).toEqual(
        c.tokenize_truncate_true,
      );
    });
  });

  it("decodes ASCII cases back to their cleaned text, and re-encodes that to the same ids", () => {
    const ascii = cases.filter((c) => isAscii(c.text) && c.ids.length > 0);
    expect(ascii.length).toBeGreaterThan(40);
    for (const c of ascii) {
      const text = tok.decode(c.ids);
      expect(text.replace(/ /g, ""), label(c)).toBe(c.cleaned.replace(/ /g, ""));
      expect(tok.encode(text), label(c)).toEqual(c.ids);
    }
  });
});

describe("CLIP tokenizer: cache", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "clip-tok-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("gives the same ids with a warm cache, a tiny cache and no cache", async () => {
    const uncached = await ClipTokenizer.load(fixtureVocab, { cacheSize: 0 });
    const tiny = await ClipTokenizer.load(fixtureVocab, { cacheSize: 3 });
    expect(uncached).not.toBe(tok);
    for (let round = 0; round < 2; round++) {
      for (const c of cases) {
        expect(tok.encode(c.text), label(c)).toEqual(c.ids);
        expect(uncached.encode(c.text), label(c)).toEqual(c.ids);
        expect(tiny.encode(c.text), label(c)).toEqual(c.ids);
      }
    }
  });

  it("shares one instance for the default file and loads it once", async () => {
    expect(await ClipTokenizer.load()).toBe(tok);
  });

  it("refuses a missing or malformed merges file with model_invalid", async () => {
    const missing = ClipTokenizer.load(path.join(dir, "nope.txt.gz"));
    await expect(missing).rejects.toMatchObject({ code: "model_invalid" });
    const notGzip = path.join(dir, "plain.txt.gz");
    writeFileSync(notGzip, "#version: 0.2\na b\n");
    await expect(ClipTokenizer.load(notGzip)).rejects.toMatchObject({ code: "model_invalid" });
    const short = path.join(dir, "short.txt.gz");
    writeFileSync(short, gzipSync("#version: 0.2\na b\n"));
    await expect(ClipTokenizer.load(short)).rejects.toMatchObject({ code: "model_invalid" });
  });
});

describe("CLIP tokenizer: context length and over-long texts", () => {
  const exact = cases.find((c) => c.n_tokens_with_sot_eot === 77)!;
  const over = cases.filter((c) => c.n_tokens_with_sot_eot > 77);

  it("has golden cases at exactly 77 and above it", () => {
    expect(exact).toBeDefined();
    expect(over.length).toBeGreaterThanOrEqual(3);
  });

  it("fits a 77-token text either way, EOT last", () => {
    for (const truncate of [false, true]) {
      const row = Array.from(tok.tokenize(exact.text, { truncate }).data);
      expect(row).toEqual(exact.tokenize_truncate_true);
      expect(row[76]).toBe(49407);
    }
  });

  it("throws label_too_long (HTTP 400) by default, like openai/CLIP's tokenize", () => {
    for (const c of over) {
      let err: unknown;
      try {
        tok.tokenize(["a cat", c.text]);
      } catch (e) {
        err = e;
      }
      expect(err, label(c)).toBeInstanceOf(RegionVqaError);
      const e = err as RegionVqaError;
      expect(e.code).toBe("label_too_long");
      expect(httpStatusFor(e.code)).toBe(400);
      expect(e.details).toMatchObject({ index: 1, tokens: c.n_tokens_with_sot_eot, contextLength: 77 });
    }
  });

  it("with truncate keeps SOT and the first 75 ids and ends with EOT, like Alpha-CLIP's tokenize", () => {
    for (const c of over) {
      const row = Array.from(tok.tokenize(c.text, { truncate: true }).data);
      expect(row).toEqual([49406, ...c.ids.slice(0, 75), 49407]);
      expect(row).toEqual(c.tokenize_truncate_true);
    }
  });

  it("honours other context lengths", () => {
    const cat = cases[0]; // "a photo of a cat.": 6 ids
    expect(Array.from(tok.tokenize(cat.text, { contextLength: 10 }).data)).toEqual([
      49406,
      ...cat.ids,
      49407,
      0,
      0,
    ]);
    expect(Array.from(tok.tokenize(cat.text, { contextLength: 5, truncate: true }).data)).toEqual([
      49406,
      ...cat.ids.slice(0, 3),
      49407,
    ]);
    expect(() => tok.tokenize(cat.text, { contextLength: 5 })).toThrow(/at most 5/);
    expect(() => tok.tokenize(cat.text, { contextLength: 1 })).toThrow(RegionVqaError);
  });

  it("rejects ids outside the vocabulary in decode", () => {
    expect(() => tok.decode([49408])).toThrow(RegionVqaError);
    expect(() => tok.decode([-1])).toThrow(RegionVqaError);
  });
});

describe("CLIP tokenizer: speed (printed, not asserted)", () => {
  it("reports load time and tokens per second", async () => {
    const texts = cases.map((c) => c.text);
    const measure = (t: ClipTokenizer, rounds: number) => {
      let tokens = 0;
      const t0 = performance.now();
      for (let r = 0; r < rounds; r++) for (const text of texts) tokens += t.encode(text).length;
      return { tokens, ms: performance.now() - t0 };
    };
    const t0 = performance.now();
    const cold = await ClipTokenizer.load(fixtureVocab, { cacheSize: 0 });
    const coldLoadMs = performance.now() - t0;
    const uncached = measure(cold, 5);
    const cached = measure(tok, 20);
    const rate = (m: { tokens: number; ms: number }) => Math.round(m.tokens / (m.ms / 1000));
    console.log(
      `CLIP tokenizer: first load ${loadMs.toFixed(0)} ms (a fresh one ${coldLoadMs.toFixed(0)} ms); ` +
        `${rate(uncached)} tokens/s without the BPE cache, ${rate(cached)} tokens/s with it ` +
        `(${cases.length} golden texts)`,
    );
    expect(uncached.tokens).toBeGreaterThan(0);
  });
});
