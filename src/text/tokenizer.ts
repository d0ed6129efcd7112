/**
 * OpenAI CLIP's byte-level BPE tokenizer (`SimpleTokenizer`, which Alpha-CLIP uses unchanged), written
 * from the step-by-step description in docs/reference.md section 6.7 and checked id for id against the
 * reference's own output (test/fixtures/golden/clip-tokenizer/).
 *
 *   text -> ftfy-style fixes -> html.unescape twice -> strip, collapse whitespace, lower-case
 *        -> regex pieces -> UTF-8 bytes as GPT-2's byte characters -> BPE -> ids
 *
 * The merges ship with the package (assets/clip-tokenizer/, MIT, (c) 2021 OpenAI). Text cleanup that
 * the reference does with ftfy is reproduced by ./ftfy-lite.ts; its header lists the inputs (kinds of
 * mojibake) where results can differ.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import { RegionVqaError } from "../common/errors.js";
import { fixText, htmlUnescape } from "./ftfy-lite.js";
import type { TokenIds } from "./token-ids.js";

/** CLIP's text context: SOT + up to 75 ids + EOT. */
export const CLIP_CONTEXT_LENGTH = 77;
/** 256 byte characters + their `</w>` forms + 48894 merges + SOT + EOT. */
export const CLIP_TOKENIZER_VOCAB_SIZE = 49408;
/** The reference reads merges `[1 : 49152 - 256 - 2 + 1]` of the file (line 0 is a header). */
const MERGES_USED = 49152 - 256 - 2;
const SOT_TEXT = "<|startoftext|>";
const EOT_TEXT = "<|endoftext|>";
const END_OF_WORD = "</w>";

/** The merges file inside the package: assets/clip-tokenizer/ (works from src/ and from dist/). */
export function clipTokenizerVocabPath(): string {
  return fileURLToPath(new URL("../../assets/clip-tokenizer/bpe_simple_vocab_16e6.txt.gz", import.meta.url));
}

export interface ClipTokenizeOptions {
  /** Row length of the output (default 77, CLIP's). */
  contextLength?: number;
  /**
   * What to do with a text longer than the row: false (default, openai/CLIP's `tokenize`) throws a
   * `label_too_long` RegionVqaError; true (Alpha-CLIP's default) keeps the first contextLength ids
   * and makes the last one EOT.
   */
  truncate?: boolean;
}

export interface ClipTokenizerOptions {
  /** Words kept in the BPE cache (default 50000; 0 turns the cache off). Results never depend on it. */
  cacheSize?: number;
}

// Whitespace as Python's `regex` module (which CLIP's tokenizer imports as `re`) means by `\s`:
// Unicode White_Space. JavaScript's `\s` differs (it has U+FEFF and lacks U+0085).
const WHITE_SPACE = "\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const WHITE_SPACE_RUN = new RegExp(`[${WHITE_SPACE}]+`, "g");
// Python's str.strip(): White_Space plus the four information separators U+001C-U+001F.
const STRIP_CHARS = `${WHITE_SPACE}\\x1c-\\x1f`;
const STRIP_RE = new RegExp(`^[${STRIP_CHARS}]+|[${STRIP_CHARS}]+$`, "g");
// CLIP's pre-tokenizer (case-insensitive, like the reference's re.IGNORECASE: `'ſ` is a contraction).
const PIECE_RE = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^${WHITE_SPACE}\\p{L}\\p{N}]+`,
  "giu",
);

const pyStrip = (text: string) => text.replace(STRIP_RE, "");

/**
 * The string CLIP's pre-tokenizer runs on: `whitespace_clean(basic_clean(text)).lower()`, i.e. ftfy,
 * `html.unescape` twice, strip, whitespace runs -> one space, strip, lower-case.
 */
export function cleanClipText(text: string): string {
  const basic = pyStrip(htmlUnescape(htmlUnescape(fixText(text))));
  return pyStrip(basic.replace(WHITE_SPACE_RUN, " ")).toLowerCase();
}

/** The regex pieces of an already cleaned text. */
export function clipPieces(cleaned: string): string[] {
  // U+0345 (combining ypogegrammeni) case-folds to a letter: Python's regex matches it with neither the
  // letter nor the other-symbol class and skips it, JavaScript's would count it as a letter. A space is
  // skipped by every alternative too, so it stands in for it.
  return Array.from(cleaned.replace(/\u0345/g, " ").matchAll(PIECE_RE), (m) => m[0]);
}

/**
 * GPT-2's reversible byte -> character table: the 188 printable bytes (33-126, 161-172, 174-255) map to
 * the character of the same number, the other 68 to U+0100, U+0101, ... in byte order. Also returns the
 * order the vocabulary lists them in (printable first).
 */
function byteCharacters(): { byChar: Map<string, number>; byByte: string[]; vocabOrder: string[] } {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const byByte: string[] = new Array(256);
  const vocabOrder: string[] = [];
  for (let b = 0; b < 256; b++) {
    if (printable(b)) {
      byByte[b] = String.fromCharCode(b);
      vocabOrder.push(byByte[b]);
    }
  }
  let next = 256;
  for (let b = 0; b < 256; b++) {
    if (!printable(b)) {
      byByte[b] = String.fromCharCode(next++);
      vocabOrder.push(byByte[b]);
    }
  }
  const byChar = new Map(byByte.map((c, b) => [c, b]));
  return { byChar, byByte, vocabOrder };
}

const loaded = new Map<string, Promise<ClipTokenizer>>();

export class ClipTokenizer {
  /** Id of `<|startoftext|>` (49406). */
  readonly sotId: number;
  /** Id of `<|endoftext|>` (49407). */
  readonly eotId: number;
  private readonly byteChar: string[];
  private readonly charByte: Map<string, number>;
  private readonly cache = new Map<string, string[]>();
  private readonly cacheSize: number;
  private readonly utf8 = new TextEncoder();

  private constructor(
    private readonly encoder: Map<string, number>,
    private readonly decoder: Map<number, string>,
    private readonly ranks: Map<string, number>,
    options: ClipTokenizerOptions,
  ) {
    const bytes = byteCharacters();
    this.byteChar = bytes.byByte;
    this.charByte = bytes.byChar;
    this.sotId = encoder.get(SOT_TEXT)!;
    this.eotId = encoder.get(EOT_TEXT)!;
    this.cacheSize = Math.max(0, Math.floor(options.cacheSize ?? 50_000));
  }

  /**
   * Load the tokenizer from a gzipped merges file (default: the one shipped in the package). Loads of
   * the default file with default options share one instance. Throws `model_invalid` when the file is
   * missing or is not a CLIP merges file.
   */
  static load(file?: string, options: ClipTokenizerOptions = {}): Promise<ClipTokenizer> {
    const shared = file === undefined && options.cacheSize === undefined;
    const resolved = path.resolve(file ?? clipTokenizerVocabPath());
    if (shared) {
      const known = loaded.get(resolved);
      if (known) return known;
    }
    const promise = ClipTokenizer.read(resolved, options);
    if (shared) {
      loaded.set(resolved, promise);
      promise.catch(() => loaded.delete(resolved));
    }
    return promise;
  }

  private static async read(file: string, options: ClipTokenizerOptions): Promise<ClipTokenizer> {
    let raw: Buffer;
    try {
      raw = await promisify(gunzip)(await readFile(file));
    } catch (err) {
      throw new RegionVqaError(
        "model_invalid",
        `Cannot read the CLIP tokenizer merges ${file}: ${(err as Error).message}`,
        { file },
      );
    }
    // Only the header and the merges used are decoded: the file holds 262146 lines, the tokenizer
    // needs the first 48895.
    let end = -1;
    for (let line = 0; line <= MERGES_USED; line++) {
      const next = raw.indexOf(10, end + 1);
      if (next < 0) {
        end = raw.length;
        break;
      }
      end = next;
    }
    const lines = raw.subarray(0, end).toString("utf8").split("\n");
    if (lines.length < MERGES_USED + 1) {
      throw new RegionVqaError(
        "model_invalid",
        `${file} has ${lines.length} lines; a CLIP merges file has a header and at least ${MERGES_USED} merges`,
        { file },
      );
    }
    const { vocabOrder } = byteCharacters();
    const vocab = [...vocabOrder, ...vocabOrder.map((c) => c + END_OF_WORD)];
    const ranks = new Map<string, number>();
    for (let i = 0; i < MERGES_USED; i++) {
      const parts = lines[i + 1].split(" ");
      if (parts.length !== 2 || !parts[0] || !parts[1]) {
        throw new RegionVqaError("model_invalid", `${file} line ${i + 2} is not a merge ("a b")`, { file });
      }
      ranks.set(`${parts[0]} ${parts[1]}`, i);
      vocab.push(parts[0] + parts[1]);
    }
    vocab.push(SOT_TEXT, EOT_TEXT);
    // As in the reference (a dict built from the list): a repeated string keeps its last id.
    const encoder = new Map<string, number>();
    vocab.forEach((s, id) => encoder.set(s, id));
    const decoder = new Map<number, string>();
    for (const [s, id] of encoder) decoder.set(id, s);
    return new ClipTokenizer(encoder, decoder, ranks, options);
  }

  /** Number of ids (49408). */
  get vocabSize(): number {
    return this.encoder.size;
  }

  /** BPE symbols of a text (`a</w>`, ...), in order: what `encode` looks up. */
  bpeSymbols(text: string): string[] {
    const out: string[] = [];
    for (const piece of clipPieces(cleanClipText(text))) {
      for (const symbol of this.bpe(this.byteString(piece))) out.push(symbol);
    }
    return out;
  }

  /** The reference's `encode`: the text's ids without SOT/EOT. */
  encode(text: string): number[] {
    return this.bpeSymbols(text).map((symbol) => {
      const id = this.encoder.get(symbol);
      if (id === undefined)
        throw new RegionVqaError("internal", `BPE symbol ${JSON.stringify(symbol)} has no id`);
      return id;
    });
  }

  /**
   * CLIP's `tokenize`: per text a row of SOT, ids, EOT and zero padding, as int32 [N, contextLength].
   * A text too long for the row throws `label_too_long` unless `truncate` is set.
   */
  tokenize(
    texts: string | readonly string[],
    options: ClipTokenizeOptions = {},
  ): TokenIds & { data: Int32Array } {
    const list = typeof texts === "string" ? [texts] : texts;
    const length = options.contextLength ?? CLIP_CONTEXT_LENGTH;
    if (!Number.isInteger(length) || length < 2) {
      throw new RegionVqaError("invalid_request", `contextLength must be an integer >= 2 (got ${length})`);
    }
    const data = new Int32Array(list.length * length);
    list.forEach((text, row) => {
      const ids = [this.sotId, ...this.encode(text), this.eotId];
      if (ids.length > length) {
        if (!options.truncate) {
          const preview = text.length > 60 ? `${text.slice(0, 57)}...` : text;
          throw new RegionVqaError(
            "label_too_long",
            `Text ${row} (${JSON.stringify(preview)}) is ${ids.length} tokens with start and end; ` +
              `the text encoder takes at most ${length}. Shorten it.`,
            { index: row, tokens: ids.length, contextLength: length },
          );
        }
        ids.length = length;
        ids[length - 1] = this.eotId;
      }
      data.set(ids, row * length);
    });
    return { data, shape: [list.length, length] };
  }

  /**
   * The reference's `decode`: symbols joined, byte characters back to bytes, UTF-8 (invalid bytes ->
   * U+FFFD), every `</w>` -> a space. Padding zeros decode as `!`, like the reference; drop them first.
   */
  decode(ids: ArrayLike<number>): string {
    let symbols = "";
    for (let i = 0; i < ids.length; i++) {
      const symbol = this.decoder.get(Number(ids[i]));
      if (symbol === undefined)
        throw new RegionVqaError("invalid_request", `token id ${ids[i]} is not in the vocabulary`);
      symbols += symbol;
    }
    const bytes = new Uint8Array(symbols.length);
    for (let i = 0; i < symbols.length; i++) bytes[i] = this.charByte.get(symbols[i])!;
    return new TextDecoder("utf-8").decode(bytes).replaceAll(END_OF_WORD, " ");
  }

  /** A piece's UTF-8 bytes as byte characters. */
  private byteString(piece: string): string {
    let s = "";
    for (const b of this.utf8.encode(piece)) s += this.byteChar[b];
    return s;
  }

  /** BPE of one piece (already byte characters): merge the best-ranked adjacent pair until none is ranked. */
  private bpe(token: string): string[] {
    if (token === SOT_TEXT || token === EOT_TEXT) return [token];
    const cached = this.cache.get(token);
    if (cached) return cached;
    let word = [...token];
    word[word.length - 1] += END_OF_WORD;
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const rank = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best];
      const second = word[best + 1];
      const merged: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (word[i] === first && i < word.length - 1 && word[i + 1] === second) {
          merged.push(first + second);
          i++;
        } else {
          merged.push(word[i]);
        }
      }
      word = merged;
    }
    if (this.cacheSize > 0) {
      // Bounded: user text should not grow it without limit. Dropping it only costs time.
      if (this.cache.size >= this.cacheSize) this.cache.clear();
      this.cache.set(token, word);
    }
    return word;
  }
}
