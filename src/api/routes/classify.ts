/**
 * POST /v1/regions/classify: zero-shot classification of one or more regions of an image against a
 * list of labels (Alpha-CLIP's own task). Each region's Alpha-CLIP image embedding is compared with
 * the labels' CLIP text features ("a photo of a {}." by default; several templates are averaged):
 * score = 100 x cosine, ranked both ways (labels per region, regions per label). Label texts are
 * encoded once and cached, so a repeated label set only runs the vision encoder.
 */
import type { FastifyPluginAsync } from "fastify";
import { RegionVqaError } from "../../common/errors.js";
import { NO_TEXT_MODEL_MESSAGE } from "../../pipeline/pipeline.js";
import { checkLabels, DEFAULT_TEMPLATE, MAX_LABELS } from "../../pipeline/region-classifier.js";
import { regionsOf, withLease, type ModelRouteOptions } from "../answer.js";
import { bearerAuth } from "../http.js";
import { bytesFromField, regionSpecsFromBody } from "../input.js";
import { errorResponses, jsonRegionFields, multipartRegionFields } from "../schemas.js";
import { mergeMultipartOptions } from "./regions.js";

const labelsDescription =
  `The labels to rank, 1 to ${MAX_LABELS} non-empty texts (e.g. ["red circle", "blue square"]). ` +
  "Each is put into the template(s) and must then fit the text encoder's 77 tokens: a longer one is " +
  "refused (`label_too_long`), never truncated.";
const templateDescription = `A template with "{}" where the label goes; default "${DEFAULT_TEMPLATE}".`;
const templatesDescription =
  'Several templates (1 to 16, each with "{}"): each label\'s features are averaged over them, as ' +
  "CLIP's zero-shot recipe does. Give `template` or `templates`, not both.";

const classifyFields = {
  regions: { type: "array", description: "A list of regions (see `region`).", items: {} },
  // Checked by `checkLabels` (labels_invalid, too_many_labels), not by the schema, so that every
  // malformed list gets the same code.
  labels: { description: labelsDescription },
  template: { description: templateDescription },
  templates: { description: templatesDescription },
};

const multipartClassifyFields = {
  labels: {
    description: `${labelsDescription} Multipart: a JSON list as text, or the field repeated (one label each).`,
  },
  template: { type: "string", description: templateDescription },
  templates: { description: `${templatesDescription} Multipart: a JSON list as text, or repeated.` },
};

const scoreFields = {
  score: { type: "number", description: "100 x cosine similarity (Alpha-CLIP's logit)." },
  probability: { type: "number" },
} as const;

/**
 * A list-of-texts field as JSON or multipart sends it: a list, one text (multipart: a JSON list as
 * text, or the field repeated, which arrives as a list). Anything else is left for `checkLabels`.
 */
function textList(value: unknown, field: string): unknown {
  if (value instanceof Uint8Array) value = Buffer.from(value).toString("utf8");
  if (Array.isArray(value)) {
    return value.map((v) => (v instanceof Uint8Array ? Buffer.from(v).toString("utf8") : v));
  }
  if (typeof value === "string" && value.trim().startsWith("[")) {
    try {
      return JSON.parse(value) as unknown;
    } catch {
      throw new RegionVqaError("labels_invalid", `The ${field} field is not a valid JSON list.`);
    }
  }
  return value;
}

const classifyRoutes: FastifyPluginAsync<ModelRouteOptions> = async (app, route) => {
  const { pipeline, config, metrics } = route;
  app.addHook("onRequest", bearerAuth(config.apiKey));

  app.post(
    "/v1/regions/classify",
    {
      preValidation: mergeMultipartOptions,
      schema: {
        tags: ["regions"],
        summary: "Zero-shot classification of one or more regions against a list of labels",
        description:
          "Each region (in the order given, as for captions; none = the alpha channel or the whole image) " +
          "is compared with every label: `regions[i].labels` ranks the labels for region i (probability = " +
          "softmax over the labels), `labels[k].regions` ranks the regions for label k (probability = " +
          "softmax over the regions). Scores are 100 x cosine. Needs a CLIP text tower " +
          "(`text_model_not_installed` otherwise).",
        // Cloned: compiling the file keyword rewrites its schema object, which must not leak to other routes.
        body: structuredClone({
          content: {
            "application/json": {
              schema: { type: "object", properties: { ...jsonRegionFields, ...classifyFields } },
            },
            "multipart/form-data": {
              schema: {
                type: "object",
                properties: {
                  ...jsonRegionFields,
                  ...multipartRegionFields,
                  ...classifyFields,
                  ...multipartClassifyFields,
                },
              },
            },
          },
        }),
        response: {
          200: {
            type: "object",
            properties: {
              model: { type: "string" },
              templates: { type: "array", items: { type: "string" } },
              regions: {
                type: "array",
                items: {
                  type: "object",
                  properties: {
                    index: { type: "integer" },
                    labels: {
                      type: "array",
                      items: { type: "object", properties: { label: { type: "string" }, ...scoreFields } },
                    },
                  },
                },
              },
              labels: {
                type: "array",
                items: {
                  type: "object",
                  properties: {
                    label: { type: "string" },
                    regions: {
                      type: "array",
                      items: { type: "object", properties: { index: { type: "integer" }, ...scoreFields } },
                    },
                  },
                },
              },
              usage: {
                type: "object",
                properties: {
                  text_encoded: { type: "integer", description: "Label texts run through the text encoder." },
                  text_cached: { type: "integer", description: "Label texts whose features were cached." },
                },
              },
              timings: {
                type: "object",
                properties: { decode_ms: { type: "number" }, classify_ms: { type: "number" } },
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
      const specs = regionSpecsFromBody(body, config.limits);
      if (body.template !== undefined && body.templates !== undefined) {
        throw new RegionVqaError("labels_invalid", "Give `template` or `templates`, not both.");
      }
      const rawTemplates =
        body.templates !== undefined
          ? textList(body.templates, "templates")
          : textList(body.template, "template");
      // Cheap checks first (labels_invalid, too_many_labels); decoding and the models wait for a turn.
      const { labels, templates } = checkLabels(textList(body.labels, "labels"), rawTemplates);
      if (!p.classifyRegions) throw new RegionVqaError("text_model_not_installed", NO_TEXT_MODEL_MESSAGE);
      return withLease(route, request, reply, async (lease) => {
        const { regions, decoded, decodeSeconds } = await regionsOf(route, lease, image, specs);
        const t0 = performance.now();
        const result = await p.classifyRegions!(image, regions, labels, { templates, decoded });
        const classifySeconds = (performance.now() - t0) / 1000;
        metrics.observeStage("classify", classifySeconds);
        if (result.textCached > 0) {
          metrics.cacheLookups.inc({ cache: "text_features", result: "hit" }, result.textCached);
        }
        if (result.textEncoded > 0) {
          metrics.cacheLookups.inc({ cache: "text_features", result: "miss" }, result.textEncoded);
        }
        lease.throwIfAborted();
        return {
          model: p.models.id,
          templates,
          regions: result.regions,
          labels: result.labels,
          usage: { text_encoded: result.textEncoded, text_cached: result.textCached },
          timings: { decode_ms: decodeSeconds * 1000, classify_ms: classifySeconds * 1000 },
        };
      });
    },
  );
};

export default classifyRoutes;
