/**
 * The server's one error handler: every failure becomes `{ "error": { "code", "message" } }` with the
 * status `httpStatusFor(code)` gives. Fastify's own errors (validation, body limits, content types,
 * multipart limits, bad JSON) are mapped to RegionVqaError codes first, so bad input is never a 500.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { httpStatusFor, isRegionVqaError, RegionVqaError, type ErrorCode } from "../common/errors.js";

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: Record<string, unknown> };
}

export function errorBody(err: RegionVqaError): ErrorBody {
  const error: ErrorBody["error"] = { code: err.code, message: err.message };
  if (err.details) error.details = err.details;
  return { error };
}

/** Fastify and plugin error codes -> our codes. The message is rewritten where Fastify's is cryptic. */
const fastifyCodes: Record<string, { code: ErrorCode; message?: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: {
    code: "payload_too_large",
    message: "The request body is larger than the server accepts.",
  },
  FST_REQ_FILE_TOO_LARGE: {
    code: "payload_too_large",
    message: "An uploaded file is larger than the server accepts.",
  },
  FST_PARTS_LIMIT: { code: "payload_too_large", message: "The multipart body has too many parts." },
  FST_FILES_LIMIT: { code: "payload_too_large", message: "The multipart body has too many files." },
  FST_FIELDS_LIMIT: { code: "payload_too_large", message: "The multipart body has too many fields." },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: "unsupported_media_type" },
  FST_INVALID_MULTIPART_CONTENT_TYPE: {
    code: "unsupported_media_type",
    message: "The request is not multipart.",
  },
  FST_ERR_CTP_EMPTY_JSON_BODY: { code: "invalid_request", message: "The JSON body is empty." },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: "invalid_request" },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: {
    code: "invalid_request",
    message: "The Content-Length header does not match the body.",
  },
  FST_ERR_CTP_EMPTY_TYPE: { code: "unsupported_media_type", message: "The Content-Type header is empty." },
  FST_ERR_CTP_INVALID_TYPE: {
    code: "unsupported_media_type",
    message: "The Content-Type header is invalid.",
  },
  FST_PROTO_VIOLATION: {
    code: "invalid_request",
    message: "The multipart body uses a forbidden field name.",
  },
  FST_ERR_VALIDATION: { code: "invalid_request" },
};

/** Messages of the multipart parser (busboy) for bodies that do not parse. */
const busboyMessages = /^Multipart: |unexpected end of multipart data|malformed part header/i;

/** Any thrown value -> a RegionVqaError (unknown failures become `internal`). */
export function toRegionVqaError(err: unknown): RegionVqaError {
  if (isRegionVqaError(err)) return err;
  const e = err as FastifyError & { validation?: unknown[]; validationContext?: string };
  if (e && Array.isArray(e.validation)) {
    return new RegionVqaError("invalid_request", `Invalid request: ${e.message}.`);
  }
  if (e && typeof e.code === "string" && fastifyCodes[e.code]) {
    const mapped = fastifyCodes[e.code];
    return new RegionVqaError(mapped.code, mapped.message ?? e.message);
  }
  if (e instanceof Error && busboyMessages.test(e.message)) {
    // A malformed multipart body: busboy's errors are plain Errors without a status.
    return new RegionVqaError("invalid_request", `The multipart body is malformed: ${e.message}.`);
  }
  if (e instanceof SyntaxError) {
    // A JSON body that does not parse reaches us as a plain SyntaxError with statusCode 400.
    return new RegionVqaError("invalid_request", `The JSON body does not parse: ${e.message}`);
  }
  const status = typeof e?.statusCode === "number" ? e.statusCode : 500;
  if (status === 413) return new RegionVqaError("payload_too_large", e.message);
  if (status === 415) return new RegionVqaError("unsupported_media_type", e.message);
  if (status >= 400 && status < 500) {
    // A client error from a plugin we do not list (e.g. a malformed multipart body).
    return new RegionVqaError("invalid_request", e.message || "Bad request.");
  }
  return new RegionVqaError("internal", "Internal server error.");
}

export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const rvErr = toRegionVqaError(err);
    const status = httpStatusFor(rvErr.code);
    // 503 (loading, overloaded) is expected operation, not a fault worth a stack trace.
    if (status >= 500 && status !== 503) request.log.error({ err }, "request failed");
    else request.log.info({ code: rvErr.code }, rvErr.message);
    if (reply.sent || reply.raw.headersSent) return;
    if (status === 503) {
      // Overloaded, still loading or shutting down: tell clients when trying again makes sense.
      const retry = Number(rvErr.details?.retryAfterSeconds);
      void reply.header("retry-after", String(Number.isInteger(retry) && retry > 0 ? retry : 1));
    }
    void reply.code(status).type("application/json").send(errorBody(rvErr));
  });
  app.setNotFoundHandler((request, reply) => {
    const err = new RegionVqaError(
      "route_not_found",
      `No route ${request.method} ${request.url.split("?")[0]}.`,
    );
    void reply.code(404).send(errorBody(err));
  });
}
