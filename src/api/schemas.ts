/**
 * JSON schemas shared by the route groups: they validate requests (Fastify + Ajv) and document them
 * (OpenAPI via @fastify/swagger). Region fields are described here but parsed by `input.ts`, which
 * gives each malformed form its own error code (box_invalid, polygon_invalid, ...).
 */
/** The part of Ajv 8's interface we use (Fastify's own Ajv instance; `ajv` at top level may be v6). */
interface AjvLike {
  addKeyword(definition: {
    keyword: string;
    compile: (schema: unknown, parent: Record<string, unknown>) => (value: unknown) => boolean;
    error: { message: string };
  }): unknown;
}

/** Ajv keyword for multipart file fields: documents them as binary strings, accepts uploaded Buffers. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function ajvBinaryFilePlugin(ajv: any): any {
  return (ajv as AjvLike).addKeyword({
    keyword: "x-binary-file",
    compile: (_schema: unknown, parent: Record<string, unknown>) => {
      // Rewritten after compiling so that the OpenAPI document shows a file picker.
      parent.type = "string";
      parent.format = "binary";
      delete parent["x-binary-file"];
      return (value: unknown) => value instanceof Uint8Array || typeof value === "string";
    },
    error: { message: "must be a file" },
  });
}

export const errorResponseSchema = {
  $id: "ErrorResponse",
  type: "object",
  description: "Every failure: a stable machine-readable code and a message in plain words.",
  properties: {
    error: {
      type: "object",
      properties: {
        code: { type: "string", examples: ["box_invalid"] },
        message: { type: "string" },
        details: { type: "object", additionalProperties: true },
      },
      required: ["code", "message"],
    },
  },
  required: ["error"],
} as const;

export const usageSchema = {
  $id: "Usage",
  type: "object",
  properties: {
    prompt_tokens: { type: "integer" },
    completion_tokens: { type: "integer" },
    total_tokens: { type: "integer" },
  },
} as const;

/** Error responses every /v1 route may give. */
export const errorResponses = {
  400: { description: "Bad input", $ref: "ErrorResponse#" },
  401: { description: "Missing or wrong API key", $ref: "ErrorResponse#" },
  403: { description: "Remote image URL not allowed", $ref: "ErrorResponse#" },
  404: { description: "Unknown conversation or model", $ref: "ErrorResponse#" },
  413: { description: "Body or image too large", $ref: "ErrorResponse#" },
  415: { description: "Unsupported content type", $ref: "ErrorResponse#" },
  503: { description: "Models still loading or overloaded", $ref: "ErrorResponse#" },
} as const;

export const regionDescription =
  'One region: "whole" (the whole image), "alpha" (the image\'s alpha channel), ' +
  '{"mask": "<base64 PNG or data URL, white = region, the image\'s size>"}, ' +
  '{"box": [x1, y1, x2, y2]} (pixels; also "x1,y1,x2,y2"), ' +
  '{"polygon": [x0, y0, x1, y1, ...]} (or [[x, y], ...], or a list of rings), ' +
  '{"rle": {"size": [height, width], "counts": "<COCO string>" | [runs...]}}, ' +
  '{"points": [[x, y], [x, y, 0], ...], "box"?: [...]} (clicks the segmenter turns into a mask; label 0 excludes), ' +
  '{"box": [...], "refine": true}. ' +
  "Omitted: the image's alpha channel when it has one, else the whole image.";

const regionField = {
  description: regionDescription,
  examples: [{ box: [10, 20, 110, 140] }, "whole"],
};

/** Region-stating fields shared by caption and ask, for JSON bodies. */
export const jsonRegionFields = {
  image: { type: "string", description: "The image: base64 or a data URL (PNG, JPEG, WebP, GIF, TIFF)." },
  mask: {
    type: "string",
    description: "A mask image of the image's size, base64 or data URL; white = region.",
  },
  region: regionField,
  box: { description: 'A box region: [x1, y1, x2, y2] or "x1,y1,x2,y2", in pixels.' },
  polygon: { description: "A polygon region: [x0, y0, x1, y1, ...], [[x, y], ...] or a list of rings." },
  rle: { description: 'A COCO RLE region: {"size": [height, width], "counts": ...}.' },
  points: {
    description:
      "Clicks in pixels that the segmenter turns into the region: [[x, y], [x, y, label], ...] (label 1 = include, 0 = exclude); a `box` given with them is refined too.",
  },
  refine: {
    type: "boolean",
    description: "With `box` and no points: the segmenter refines the box into a mask.",
  },
} as const;

/** The same fields as multipart parts (files and text fields). */
export const multipartRegionFields = {
  image: { "x-binary-file": true, description: "The image file." },
  mask: {
    description: "A mask image file of the image's size (white = region); may repeat.",
    // A repeated file part arrives as a list.
    anyOf: [{ "x-binary-file": true }, { type: "array", items: { "x-binary-file": true } }],
  },
  region: { type: "string", description: `JSON. ${regionDescription}` },
  box: { type: "string", description: 'A box "x1,y1,x2,y2" or JSON [x1, y1, x2, y2]; may repeat.' },
  polygon: { type: "string", description: "JSON polygon." },
  rle: { type: "string", description: "JSON COCO RLE." },
  points: { type: "string", description: "JSON clicks [[x, y], [x, y, label], ...] for the segmenter." },
  refine: { type: "string", description: '"true": the segmenter refines the `box`.' },
  options: {
    type: "string",
    description:
      'JSON object of further fields (e.g. {"max_tokens": 64, "temperature": 0}); merged into the form.',
  },
} as const;

export const generationFields = {
  max_tokens: { type: "integer", minimum: 1, description: "Most tokens to generate (capped by the server)." },
  temperature: { type: "number", minimum: 0, maximum: 2, description: "0 = greedy decoding (the default)." },
  top_p: { type: "number", exclusiveMinimum: 0, maximum: 1 },
  top_k: { type: "integer", minimum: 0 },
  seed: { type: "integer", minimum: 0 },
  stop: {
    anyOf: [{ type: "string" }, { type: "array", items: { type: "string" }, maxItems: 4 }],
    description: "Stop sequence(s): generation ends before them.",
  },
} as const;

export const sharedSchemas = [errorResponseSchema, usageSchema];
