/**
 * POST /v1/embeddings, OpenAI-compatible: texts -> their CLIP text features, and (extension) image
 * regions -> their Alpha-CLIP `image_embed`, both L2-normalised, so that a region's embedding and a
 * text's embedding compare by their dot product (x 100 = the classify route's score with the template
 * "{}"). Embeddings come as float lists or as base64 of little-endian float32 (what the `openai` client
 * asks for when no `encoding_format` is given, and decodes itself).
 */
import type { FastifyPluginAsync } from "fastify";
import { RegionVqaError } from "../../common/errors.js";
import { MAX_EMBED_TEXTS, NO_TEXT_MODEL_MESSAGE } from "../../pipeline/pipeline.js";
import { l2Normalize } from "../../pipeline/region-classifier.js";
import type { RegionVqaPipeline } from "../../pipeline/types.js";
import { ClipTokenizer } from "../../text/index.js";
import { regionsOf, withLease, type ModelRouteOptions } from "../answer.js";
import { bearerAuth } from "../http.js";
import { bytesFromField, parseRegion, type RegionSpec } from "../input.js";
import { errorResponses, regionDescription } from "../schemas.js";

/** The id the embeddings are reported under (and listed in /v1/models when a text tower is loaded). */
export const embeddingModelId = (p: RegionVqaPipeline): string => `${p.models.id}-embeddings`;

interface EmbeddingsRequest {
  model?: string;
  input?: unknown;
  encoding_format?: "float" | "base64";
  dimensions?: number;
  user?: string;
}

type EmbeddingInput = { kind: "text"; text: string } | { kind: "region"; image: string; spec?: RegionSpec };

const describe = (v: unknown): string =>
  v === null ? "null" : Array.isArray(v) ? "a list" : typeof v === "object" ? "an object" : typeof v;

/** `input` -> texts and image regions, in order; cheap checks only (no model runs). */
function parseInput(input: unknown, maxRegions: number, limits: ModelRouteOptions["config"]["limits"]) {
  const list = typeof input === "string" ? [input] : input;
  if (!Array.isArray(list)) {
    throw new RegionVqaError(
      "invalid_request",
      `\`input\` must be a text, a list of texts or a list of {image, region} objects; got ${describe(input)}.`,
    );
  }
  if (list.length === 0)
    throw new RegionVqaError("labels_invalid", "`input` is empty: give at least one input.");
  if (list.length > MAX_EMBED_TEXTS) {
    throw new RegionVqaError("too_many_inputs", `${list.length} inputs; the limit is ${MAX_EMBED_TEXTS}.`, {
      inputs: list.length,
      maxInputs: MAX_EMBED_TEXTS,
    });
  }
  const items: EmbeddingInput[] = list.map((item: unknown, i): EmbeddingInput => {
    if (typeof item === "string") {
      if (item.trim() === "")
        throw new RegionVqaError("labels_invalid", `Input ${i} is empty; every text needs some text.`);
      return { kind: "text", text: item };
    }
    if (typeof item === "number" || (Array.isArray(item) && item.every((x) => typeof x === "number"))) {
      throw new RegionVqaError(
        "invalid_request",
        "Token-id inputs are not supported: send the texts themselves (they are tokenised with CLIP's tokenizer).",
      );
    }
    if (item && typeof item === "object" && !Array.isArray(item)) {
      const o = item as Record<string, unknown>;
      if (typeof o.image !== "string" || o.image === "") {
        throw new RegionVqaError(
          "image_missing",
          `Input ${i} is an object without an image: give {"image": "<data URL or base64>", "region": ...}.`,
        );
      }
      const spec =
        o.region === undefined || o.region === null
          ? undefined
          : parseRegion(o.region, limits, `input[${i}].region`);
      return { kind: "region", image: o.image, ...(spec ? { spec } : {}) };
    }
    throw new RegionVqaError(
      "invalid_request",
      `Input ${i} must be a text or an {image, region} object; got ${describe(item)}.`,
    );
  });
  const regionCount = items.filter((x) => x.kind === "region").length;
  if (regionCount > maxRegions) {
    throw new RegionVqaError(
      "too_many_regions",
      `${regionCount} image inputs; the limit is ${maxRegions} per request.`,
      { regions: regionCount, maxRegions },
    );
  }
  return items;
}

/** Little-endian float32 bytes as base64 (OpenAI's `encoding_format: "base64"`). */
function base64Of(v: Float32Array): string {
  const bytes = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => bytes.writeFloatLE(x, i * 4));
  return bytes.toString("base64");
}

const embeddingsRoutes: FastifyPluginAsync<ModelRouteOptions> = async (app, route) => {
  const { pipeline, config, metrics } = route;
  app.addHook("onRequest", bearerAuth(config.apiKey));

  app.post(
    "/v1/embeddings",
    {
      schema: {
        tags: ["openai"],
        summary: "OpenAI-compatible embeddings of texts (CLIP) and image regions (Alpha-CLIP)",
        description:
          "`input` is a text, a list of texts, or (extension) a list of " +
          '`{"image": "<data URL or base64>", "region": <region>}` objects; texts and images may be mixed. ' +
          "Texts get their CLIP text features, regions their Alpha-CLIP image embedding, both L2-normalised " +
          "(so 100 x the dot product of a region's and a text's embedding is the classify route's score). " +
          "Needs a CLIP text tower for texts (`text_model_not_installed` otherwise). `dimensions` must be " +
          "the native width (shortening is not supported).",
        body: {
          type: "object",
          required: ["input"],
          properties: {
            model: {
              type: "string",
              description:
                "Any name: the server embeds with its one loaded model and reports that model's id.",
            },
            // Checked in the handler so that every malformed input gets the same codes.
            input: {
              description:
                `A text, 1 to ${MAX_EMBED_TEXTS} texts (each within CLIP's 77 tokens; never truncated), ` +
                `or objects {image, region}. Region: ${regionDescription}`,
            },
            encoding_format: { type: "string", enum: ["float", "base64"], default: "float" },
            dimensions: { type: "integer", minimum: 1 },
            user: { type: "string" },
          },
        },
        response: {
          200: {
            type: "object",
            properties: {
              object: { type: "string" },
              data: {
                type: "array",
                items: {
                  type: "object",
                  properties: {
                    object: { type: "string" },
                    index: { type: "integer" },
                    embedding: {
                      anyOf: [{ type: "array", items: { type: "number" } }, { type: "string" }],
                    },
                  },
                },
              },
              model: { type: "string" },
              usage: {
                type: "object",
                properties: { prompt_tokens: { type: "integer" }, total_tokens: { type: "integer" } },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (request, reply) => {
      const body = (request.body ?? {}) as EmbeddingsRequest;
      const p = pipeline.get();
      // Cheap checks first; the models wait for a turn.
      const items = parseInput(body.input, config.limits.maxRegions, config.limits);
      const texts = items.flatMap((x) => (x.kind === "text" ? [x.text] : []));
      if (texts.length > 0 && !p.embedTexts) {
        throw new RegionVqaError("text_model_not_installed", NO_TEXT_MODEL_MESSAGE);
      }
      const hasRegions = items.some((x) => x.kind === "region");
      if (hasRegions && !p.embedRegions) {
        throw new RegionVqaError("invalid_request", "This server's pipeline cannot embed image regions.");
      }
      // Decode every image before the lease, so that a bad one is refused at once.
      const images = new Map<string, Uint8Array>();
      items.forEach((x, i) => {
        if (x.kind === "region" && !images.has(x.image)) {
          images.set(
            x.image,
            bytesFromField(x.image, `image of input ${i}`, {
              missing: "image_missing",
              undecodable: "image_undecodable",
            }),
          );
        }
      });
      return withLease(route, request, reply, async (lease) => {
        const t0 = performance.now();
        const embeddings: Float32Array[] = new Array<Float32Array>(items.length);
        if (texts.length > 0) {
          const features = await p.embedTexts!(texts);
          let k = 0;
          items.forEach((x, i) => {
            if (x.kind === "text") embeddings[i] = features[k++];
          });
        }
        // The regions of one image are resolved and encoded together (one decode, one batch).
        for (const [key, bytes] of images) {
          lease.throwIfAborted();
          const indices = items.flatMap((x, i) => (x.kind === "region" && x.image === key ? [i] : []));
          const specs = indices.map((i) => {
            const x = items[i] as Extract<EmbeddingInput, { kind: "region" }>;
            return x.spec ?? { kind: "alpha_or_whole" as const };
          });
          // No region: the image's alpha channel when it has one, else the whole image (as elsewhere).
          const explicit = specs.filter((s): s is RegionSpec => s.kind !== "alpha_or_whole");
          const resolved = await regionsOf(route, lease, bytes, explicit);
          const defaultRegion =
            explicit.length === 0
              ? resolved.regions[0]
              : explicit.length < specs.length
                ? (await regionsOf(route, lease, bytes, [])).regions[0]
                : undefined;
          let e = 0;
          const regions = specs.map((s) =>
            s.kind === "alpha_or_whole" ? defaultRegion! : resolved.regions[e++],
          );
          const blocks = await p.embedRegions!(bytes, regions, resolved.decoded);
          blocks.forEach((b, j) => {
            if (!b.imageEmbed) {
              throw new RegionVqaError(
                "model_invalid",
                "The vision model has no image_embed output to embed regions with.",
              );
            }
            embeddings[indices[j]] = l2Normalize(b.imageEmbed);
          });
        }
        lease.throwIfAborted();
        metrics.observeStage("embed", (performance.now() - t0) / 1000);
        const width = embeddings[0].length;
        if (embeddings.some((v) => v.length !== width)) {
          throw new RegionVqaError(
            "embedding_mismatch",
            "The text and region embeddings of this model differ in width: they cannot be mixed in one request.",
          );
        }
        if (body.dimensions !== undefined && body.dimensions !== width) {
          throw new RegionVqaError(
            "invalid_request",
            `dimensions ${body.dimensions} is not supported: this model's embeddings are ${width} wide and cannot be shortened; omit dimensions or give ${width}.`,
            { dimensions: body.dimensions, width },
          );
        }
        let promptTokens = 0;
        if (texts.length > 0) {
          const tokenizer = await ClipTokenizer.load();
          for (const t of texts) promptTokens += tokenizer.encode(t).length + 2;
        }
        const base64 = body.encoding_format === "base64";
        return {
          object: "list",
          data: embeddings.map((v, index) => ({
            object: "embedding",
            index,
            embedding: base64 ? base64Of(v) : Array.from(v),
          })),
          model: embeddingModelId(p),
          usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
        };
      });
    },
  );
};

export default embeddingsRoutes;
