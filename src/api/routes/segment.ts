/**
 * POST /v1/regions/segment: an image and clicks (and/or a box) -> the mask the segmenter makes of
 * them, as a PNG data URL and as COCO RLE, with its score, the other candidate masks and timings.
 * The image's embeddings are cached by content, so the next click on the same image only decodes.
 */
import type { FastifyPluginAsync } from "fastify";
import { RegionVqaError } from "../../common/errors.js";
import { NO_SEGMENTER_MESSAGE, type SegmentPrompt } from "../../segmenter/index.js";
import { encodeMaskPng, encodeRleAsync, type Mask } from "../../vision/index.js";
import { withLease, type ModelRouteOptions } from "../answer.js";
import { bearerAuth } from "../http.js";
import { bytesFromField, decodeRequestImage, regionSpecsFromBody } from "../input.js";
import { errorResponses } from "../schemas.js";

const maskSchema = {
  type: "object",
  properties: {
    png: { type: "string", description: "data:image/png;base64,... single channel, 255 = inside" },
    rle: {
      type: "object",
      properties: { size: { type: "array", items: { type: "integer" } }, counts: { type: "string" } },
    },
  },
} as const;

const promptFields = {
  points: {
    description:
      "Clicks in image pixels: [[x, y], [x, y, label], ...]; label 1 = include (default), 0 = exclude. At most 32. Multipart: JSON text.",
  },
  box: { description: 'A box [x1, y1, x2, y2] (or "x1,y1,x2,y2") in pixels that the segmenter refines.' },
};

async function maskJson(
  mask: Mask,
): Promise<{ png: string; rle: { size: [number, number]; counts: string } }> {
  const [pngBytes, rle] = await Promise.all([encodeMaskPng(mask), encodeRleAsync(mask)]);
  const png = Buffer.from(pngBytes).toString("base64");
  return { png: `data:image/png;base64,${png}`, rle: { size: rle.size, counts: rle.counts as string } };
}

const segmentRoutes: FastifyPluginAsync<ModelRouteOptions> = async (app, route) => {
  const { pipeline, config, metrics } = route;
  app.addHook("onRequest", bearerAuth(config.apiKey));

  app.post(
    "/v1/regions/segment",
    {
      schema: {
        tags: ["regions"],
        summary: "Turn clicks and/or a box into a region mask (Segment Anything)",
        description:
          "The segmenter's best mask (highest predicted IoU) as a PNG data URL and COCO RLE, its score, " +
          "every candidate with its score, and timings. Encode once, click many: the image's embeddings " +
          "are cached by content, so further clicks on the same image only run the prompt decoder.",
        body: {
          content: {
            "application/json": {
              schema: {
                type: "object",
                properties: { image: { type: "string", description: "base64 or data URL" }, ...promptFields },
                required: ["image"],
              },
            },
            "multipart/form-data": {
              schema: {
                type: "object",
                properties: {
                  image: { "x-binary-file": true, description: "The image file." },
                  points: { type: "string", description: promptFields.points.description },
                  box: { type: "string", description: promptFields.box.description },
                },
                required: ["image"],
              },
            },
          },
        },
        response: {
          200: {
            type: "object",
            properties: {
              model: { type: "string" },
              width: { type: "integer" },
              height: { type: "integer" },
              mask: maskSchema,
              score: { type: "number" },
              index: { type: "integer" },
              object_score: { type: "number" },
              area: { type: "integer" },
              candidates: {
                type: "array",
                items: {
                  type: "object",
                  properties: {
                    index: { type: "integer" },
                    score: { type: "number" },
                    area: { type: "integer" },
                    mask: maskSchema,
                  },
                },
              },
              timings: {
                type: "object",
                properties: {
                  decode_ms: { type: "number" },
                  encode_ms: { type: "number" },
                  prompt_decode_ms: { type: "number" },
                  postprocess_ms: { type: "number" },
                  embeddings_cached: { type: "boolean" },
                },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (request, reply) => {
      const body = (request.body ?? {}) as Record<string, unknown>;
      const p = pipeline.get();
      const image = bytesFromField(body.image, "image", {
        missing: "image_missing",
        undecodable: "image_undecodable",
      });
      if (body.points === undefined && body.box === undefined) {
        throw new RegionVqaError("point_invalid", "Give points (and/or a box) to segment.");
      }
      // The same parser as every other route: points (+ box) become one prompt.
      const [spec] = regionSpecsFromBody({ points: body.points, box: body.box, refine: true }, config.limits);
      if (spec?.kind !== "points") throw new RegionVqaError("point_invalid", "Give points (and/or a box).");
      if (!p.segment) throw new RegionVqaError("segmenter_not_installed", NO_SEGMENTER_MESSAGE);
      return withLease(route, request, reply, async (lease) => {
        const { decoded, decodeSeconds } = await decodeRequestImage(image, config.limits);
        metrics.observeStage("decode", decodeSeconds);
        lease.throwIfAborted();
        const prompt: SegmentPrompt = { points: spec.points, box: spec.box };
        const result = await p.segment!(decoded, prompt, { imageKey: decoded.sha256, allCandidates: true });
        lease.throwIfAborted();
        return {
          model: p.models.segmenter ?? p.models.id,
          width: decoded.width,
          height: decoded.height,
          mask: await maskJson(result.mask),
          score: result.score,
          index: result.index,
          ...(result.objectScore !== undefined ? { object_score: result.objectScore } : {}),
          area: result.area,
          candidates: await Promise.all(
            result.candidates.map(async (c, index) => ({
              index,
              score: c.score,
              area: c.area,
              mask: await maskJson(c.mask!),
            })),
          ),
          timings: {
            decode_ms: decodeSeconds * 1000,
            encode_ms: result.timings.encodeMs,
            prompt_decode_ms: result.timings.decodeMs,
            postprocess_ms: result.timings.postprocessMs,
            embeddings_cached: result.timings.embeddingsCached,
          },
        };
      });
    },
  );
};

export default segmentRoutes;
