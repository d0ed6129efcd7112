/**
 * Text cleanup in front of CLIP's tokenizer: the parts of ftfy's `fix_text` (ftfy 6.3.1, default
 * options) that matter for short English-like texts, and Python's `html.unescape`, which CLIP applies
 * twice after ftfy. docs/reference.md section 6.7 lists the steps; this is a re-implementation from
 * those facts, not a translation of ftfy.
 *
 * What `fixText` does, per line (a line ends after `\n`), repeating each line's fixes until nothing
 * changes:
 * - decodes `&name;` and `&#...;` references (the all-caps forms of lower-case names too), unless the
 *   line holds `<`; from the first line holding `<` on, no later line is decoded either;
 * - repairs UTF-8 mojibake that came from reading UTF-8 bytes as Windows-1252 or Latin-1 (`cafÃ©` ->
 *   `café`, `âœ”` -> `✔`, `Ð¤Ð¾Ñ‚Ð¾` -> `Фото`), wherever such runs stand in the line, repeatedly, so
 *   doubly-encoded text is repaired too;
 * - turns C1 control characters into the Windows-1252 characters of the same byte (U+0085 -> `…`);
 * - splits Latin ligatures, maps fullwidth and halfwidth forms to normal ones (U+3000 -> space),
 *   straightens curly quotes, makes CRLF, CR, U+2028, U+2029 and U+0085 line feeds, replaces unpaired
 *   surrogates with U+FFFD, removes ANSI terminal escapes and control characters, and NFC-normalises.
 *
 * Where results can differ from ftfy (all are kinds of mojibake or garbled text; a typed label rarely
 * has them). Compared with ftfy 6.3.1 itself on 3,000 random strings of HTML references, odd
 * whitespace, control characters, ANSI escapes, ligatures, fullwidth forms, combining marks, CJK, emoji
 * and special tokens (but no Latin-1 or Windows-1252 characters), the results were identical.
 * - ftfy decides with a badness heuristic whether a line is mojibake at all, and also tries eight more
 *   single-byte encodings (Windows-1250/1251/1253/1254/1257, ISO-8859-2, MacRoman, CP437). Here a run
 *   of characters is re-decoded when its Windows-1252 bytes are valid UTF-8 and it is either longer
 *   than two characters or starts with Â, Ã, Ä or Å; nothing else is tried. So `РўРѕ`-style
 *   (Windows-1251) mojibake stays, a lone `Ñ‚` stays, and where ftfy's heuristic takes an accented
 *   letter next to a symbol for mojibake (or not) the two can disagree.
 * - ftfy also repairs mojibake whose no-break spaces became spaces (`voilÃ le`), sequences holding
 *   U+FFFD or U+001A, and Java/CESU-8 byte forms; none of these is done here.
 * - ftfy cuts lines longer than 1,000,000 code points into pieces; here a line is never cut.
 */
import { htmlEntityTable } from "./html-entities.js";

/** Windows-1252 bytes 0x80-0x9F; its five undefined bytes stay the C1 control of the same number. */
const CP1252_80_9F =
  "\u20ac\u0081\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u008d\u017d\u008f" +
  "\u0090\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u009d\u017e\u0178";

/** Character -> Windows-1252 byte for the 32 characters above (Latin-1 gives the rest). */
const CP1252_BYTE = new Map<string, number>([...CP1252_80_9F].map((c, i) => [c, 0x80 + i]));

// ---------------------------------------------------------------------------------------------
// Python's html.unescape

/** Numeric references HTML maps to something other than their code point. */
function remappedCharref(num: number): string | undefined {
  if (num === 0) return "\ufffd";
  if (num === 0x0d) return "\r";
  if (num >= 0x80 && num <= 0x9f) return CP1252_80_9F[num - 0x80];
  return undefined;
}

/** Code points a numeric reference may not produce: control characters and noncharacters. */
function forbiddenCodePoint(num: number): boolean {
  return (
    (num >= 0x01 && num <= 0x08) ||
    num === 0x0b ||
    (num >= 0x0e && num <= 0x1f) ||
    (num >= 0x7f && num <= 0x9f) ||
    (num >= 0xfdd0 && num <= 0xfdef) ||
    (num & 0xfffe) === 0xfffe
  );
}

function numericCharref(body: string): string {
  const hex = body[1] === "x" || body[1] === "X";
  const digits = body.slice(hex ? 2 : 1).replace(/;$/, "");
  // Very long digit strings give a huge float or Infinity: out of range either way, as in Python.
  const num = parseInt(digits, hex ? 16 : 10);
  const remapped = remappedCharref(num);
  if (remapped !== undefined) return remapped;
  if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return "\ufffd";
  if (forbiddenCodePoint(num)) return "";
  return String.fromCodePoint(num);
}

function namedCharref(body: string): string {
  const table = htmlEntityTable();
  const whole = table.get(body);
  if (whole !== undefined) return whole;
  // The longest known name that the text starts with (only the legacy names can match without `;`).
  // Names are ASCII, so UTF-16 prefixes find the same one Python's code-point prefixes do.
  for (let end = body.length - 1; end > 1; end--) {
    const hit = table.get(body.slice(0, end));
    if (hit !== undefined) return hit + body.slice(end);
  }
  return `&${body}`;
}

const CHARREF_RE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/gu;

/** Python's `html.unescape`: named references (legacy ones also without `;`) and numeric ones. */
export function htmlUnescape(text: string): string {
  if (!text.includes("&")) return text;
  return text.replace(CHARREF_RE, (_m, body: string) =>
    body[0] === "#" ? numericCharref(body) : namedCharref(body),
  );
}

// ---------------------------------------------------------------------------------------------
// ftfy's fixes

let ftfyEntities: Map<string, string> | undefined;

/**
 * `&name;` -> text for every HTML5 name ending in `;`, plus the all-caps spelling of each lower-case
 * name when that spelling means nothing to `html.unescape` (`&EACUTE;` -> `É`).
 */
function ftfyEntityTable(): Map<string, string> {
  if (ftfyEntities) return ftfyEntities;
  const map = new Map<string, string>();
  for (const [name, chars] of htmlEntityTable()) {
    if (!name.endsWith(";")) continue;
    map.set(`&${name}`, chars);
    if (name === name.toLowerCase()) {
      const upper = `&${name.toUpperCase()}`;
      if (htmlUnescape(upper) === upper) map.set(upper, chars.toUpperCase());
    }
  }
  ftfyEntities = map;
  return map;
}

const FTFY_ENTITY_RE = /&#?[0-9A-Za-z]{1,24};/g;

/** ftfy's reference decoding: only references that end in `;`; a numeric one that gives `;` stays. */
function unescapeEntities(text: string): string {
  if (!text.includes("&")) return text;
  const table = ftfyEntityTable();
  return text.replace(FTFY_ENTITY_RE, (ref) => {
    const known = table.get(ref);
    if (known !== undefined) return known;
    if (ref.startsWith("&#")) {
      const decoded = htmlUnescape(ref);
      return decoded.includes(";") ? ref : decoded;
    }
    return ref;
  });
}

const utf8Strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Windows-1252 bytes of a text (its undefined bytes as the C1 controls), or undefined. */
function cp1252Bytes(text: string): Uint8Array | undefined {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const b = c < 0x80 || (c >= 0xa0 && c <= 0xff) ? c : CP1252_BYTE.get(text[i]);
    if (b === undefined) return undefined;
    out[i] = b;
  }
  return out;
}

function fixC1Controls(text: string): string {
  return text.replace(/[\x80-\x9f]/g, (c) => CP1252_80_9F[c.charCodeAt(0) - 0x80]);
}

/** Characters whose Windows-1252 (or Latin-1) byte is a UTF-8 continuation byte, 0x80-0xBF. */
const CONT = `[\u0080-\u00bf${CP1252_80_9F.replace(/[\u0080-\u009f]/g, "")}]`;
/** Runs of what UTF-8 sequences look like when read as Windows-1252, not right after another such byte. */
const FRAGMENT_RE = new RegExp(
  `(?<!${CONT})(?:[\u00c2-\u00df]${CONT}|[\u00e0-\u00ef]${CONT}{2}|[\u00f0-\u00f4]${CONT}{3})+`,
  "g",
);

/**
 * Mojibake runs: each run that is valid UTF-8 and looks like mojibake is decoded. A lone two-character
 * run (an accented capital before a symbol) is also ordinary text (`CAFÉ’S`), so it counts only when
 * it starts with Â, Ã, Ä or Å, the lead bytes of U+0080-U+017F, where Western mojibake comes from.
 */
function repairFragments(text: string): string {
  return text.replace(FRAGMENT_RE, (run) => {
    if (run.length === 2 && (run.charCodeAt(0) < 0xc2 || run.charCodeAt(0) > 0xc5)) return run;
    const bytes = cp1252Bytes(run);
    if (!bytes) return run;
    try {
      return utf8Strict.decode(bytes);
    } catch {
      return run;
    }
  });
}

/** One round of mojibake repair; returns the text unchanged when it has nothing to repair. */
function fixEncodingOnce(text: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(text)) return text;
  const repaired = repairFragments(text);
  if (repaired !== text) return repaired;
  return /[\x80-\x9f]/.test(text) ? fixC1Controls(text) : text;
}

function fixEncoding(text: string): string {
  for (;;) {
    const fixed = fixEncodingOnce(text);
    if (fixed === text) return text;
    text = fixed;
  }
}

const LIGATURES: Record<string, string> = {
  "\u0132": "IJ",
  "\u0133": "ij",
  "\u0149": "\u02bcn",
  "\u01c4": "D\u017d",
  "\u01c5": "D\u017e",
  "\u01c6": "d\u017e",
  "\u01c7": "LJ",
  "\u01c8": "Lj",
  "\u01c9": "lj",
  "\u01ca": "NJ",
  "\u01cb": "Nj",
  "\u01cc": "nj",
  "\u01f1": "DZ",
  "\u01f2": "Dz",
  "\u01f3": "dz",
  "\ufb00": "ff",
  "\ufb01": "fi",
  "\ufb02": "fl",
  "\ufb03": "ffi",
  "\ufb04": "ffl",
  "\ufb05": "\u017ft",
  "\ufb06": "st",
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join("")}]`, "g");

function fixLatinLigatures(text: string): string {
  return text.replace(LIGATURE_RE, (c) => LIGATURES[c]);
}

/** Ideographic space -> space; fullwidth and halfwidth forms (U+FF01-U+FFEF) -> their NFKC form. */
function fixCharacterWidth(text: string): string {
  return text.replace(/[\u3000\uff01-\uffef]/g, (c) => (c === "\u3000" ? " " : c.normalize("NFKC")));
}

function uncurlQuotes(text: string): string {
  return text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
}

function fixLineBreaks(text: string): string {
  return text.replace(/\r\n|[\r\u2028\u2029\u0085]/g, "\n");
}

function fixSurrogates(text: string): string {
  return text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "\ufffd");
}

function removeTerminalEscapes(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[(?:\p{Nd}|;)*[a-zA-Z]/gu, "");
}

function removeControlChars(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g, "");
}

function fixLine(line: string, decodeEntities: boolean): string {
  for (;;) {
    const before = line;
    if (decodeEntities) line = unescapeEntities(line);
    line = fixEncoding(line);
    line = fixC1Controls(line);
    line = fixLatinLigatures(line);
    line = fixCharacterWidth(line);
    line = uncurlQuotes(line);
    line = fixLineBreaks(line);
    line = fixSurrogates(line);
    line = removeTerminalEscapes(line);
    line = removeControlChars(line);
    line = line.normalize("NFC");
    if (line === before) return line;
  }
}

/** ftfy's `fix_text` with default options, within the limits listed at the top of this file. */
export function fixText(text: string): string {
  let decodeEntities = true;
  let out = "";
  let pos = 0;
  while (pos < text.length) {
    const newline = text.indexOf("\n", pos);
    const end = newline < 0 ? text.length : newline + 1;
    const line = text.slice(pos, end);
    if (decodeEntities && line.includes("<")) decodeEntities = false;
    out += fixLine(line, decodeEntities);
    pos = end;
  }
  return out;
}
