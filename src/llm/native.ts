/**
 * Bridge to the companion addon (native/embd_addon.cc) that decodes float embedding rows into a
 * node-llama-cpp context. node-llama-cpp 3.21.1 has no public API for this, so this module touches a
 * few of its private fields; every one is checked by `assertEmbeddingSupport` before use, and the
 * addon checks the C++ object layout before it dereferences anything (docs/reference.md section 5).
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { DisposedError, type LlamaContext, type LlamaContextSequence, type LlamaModel } from "node-llama-cpp";
import { RegionVqaError, isRegionVqaError } from "../common/errors.js";

/** Addon path: build/Release beside src/ and dist/ alike (both are two levels below the repo root). */
const addonPath = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "../../build/Release/region_vqa_embd.node",
);

export interface NativeContextInfo {
  contextSize: number;
  batchSize: number;
  sequences: number;
  embeddingSize: number;
  vocabularySize: number;
  libraryPath: string;
}

interface ExpectedContext {
  contextSize: number;
  batchSize: number;
  sequences: number;
}

interface EmbeddingsAddon {
  checkContext(context: object, model: object, expected: ExpectedContext): NativeContextInfo;
  decodeEmbeddings(
    context: object,
    model: object,
    expected: ExpectedContext,
    sequenceId: number,
    firstPosition: number,
    rows: Float32Array,
    count: number,
    wantLogits: boolean,
  ): Promise<{ decoded: number; logits?: Float32Array }>;
  libraryPath(): string;
}

/** The private parts of node-llama-cpp 3.21.1 this module relies on (see LlamaContext.js). */
interface AddonContextHandle {
  getContextSize(): number;
  getSequenceKvCacheMaxPosition(sequenceId: number): number;
  removeTokenCellsFromSequence(sequenceId: number, start: number, end: number): boolean;
}
interface ContextInternals {
  _ctx: AddonContextHandle;
  _backendContextDisposeGuard: { createPreventDisposalHandle(): { dispose(): void } };
}
interface ModelInternals {
  _model: object;
}
interface SequenceInternals {
  _sequenceId: number;
  _lock: object;
  _contextTokens: number[];
  _nextTokenIndex: number;
  _loadedTokenPredictions: unknown[];
}
type WithLock = <T>(scope: [object, string], callback: () => Promise<T> | T) => Promise<T>;

let addon: EmbeddingsAddon | undefined;
let withLockPromise: Promise<WithLock> | undefined;

function incompatible(message: string, details?: Record<string, unknown>): RegionVqaError {
  return new RegionVqaError("native_incompatible", message, details);
}

function loadAddon(): EmbeddingsAddon {
  if (addon) return addon;
  if (!existsSync(addonPath)) {
    throw incompatible(
      `the embeddings addon is not built (${addonPath} is missing): run \`npm run build:native\` (needs g++)`,
    );
  }
  try {
    addon = createRequire(import.meta.url)(addonPath) as EmbeddingsAddon;
  } catch (err) {
    throw incompatible(`the embeddings addon failed to load: ${(err as Error).message}`);
  }
  return addon;
}

/**
 * node-llama-cpp's locks are keyed by object in a module-level map of lifecycle-utils, so we must use
 * the very module instance node-llama-cpp imported: resolve it from node-llama-cpp's own location
 * (it is hoisted today, but may not be), then prove identity through a class node-llama-cpp re-exports.
 */
function loadWithLock(): Promise<WithLock> {
  withLockPromise ??= (async () => {
    const require = createRequire(import.meta.url);
    const llamaEntry = require.resolve("node-llama-cpp");
    const lifecyclePath = createRequire(llamaEntry).resolve("lifecycle-utils");
    const lifecycle = (await import(pathToFileURL(lifecyclePath).href)) as {
      withLock: WithLock;
      DisposedError: unknown;
    };
    if (lifecycle.DisposedError !== DisposedError || typeof lifecycle.withLock !== "function") {
      throw incompatible(
        `lifecycle-utils at ${lifecyclePath} is not the instance node-llama-cpp uses; its locks would not be shared`,
      );
    }
    return lifecycle.withLock;
  })();
  return withLockPromise;
}

function expectedOf(context: LlamaContext): ExpectedContext {
  const internals = context as unknown as ContextInternals;
  return {
    contextSize: internals._ctx.getContextSize(),
    batchSize: context.batchSize,
    sequences: context.totalSequences,
  };
}

/**
 * Checks everything embedding evaluation needs on this context: the addon, the shared lock module,
 * node-llama-cpp's private fields, and the native object layout. Throws `native_incompatible`.
 */
export async function assertEmbeddingSupport(
  context: LlamaContext,
  model: LlamaModel,
): Promise<NativeContextInfo> {
  const native = loadAddon();
  await loadWithLock();
  const ctx = context as unknown as Partial<ContextInternals>;
  const mdl = model as unknown as Partial<ModelInternals>;
  const problems: string[] = [];
  if (typeof ctx._ctx !== "object" || ctx._ctx === null) problems.push("LlamaContext._ctx");
  else {
    for (const method of [
      "getContextSize",
      "getSequenceKvCacheMaxPosition",
      "removeTokenCellsFromSequence",
    ]) {
      if (typeof (ctx._ctx as unknown as Record<string, unknown>)[method] !== "function") {
        problems.push(`LlamaContext._ctx.${method}`);
      }
    }
  }
  if (typeof ctx._backendContextDisposeGuard?.createPreventDisposalHandle !== "function") {
    problems.push("LlamaContext._backendContextDisposeGuard");
  }
  if (typeof mdl._model !== "object" || mdl._model === null) problems.push("LlamaModel._model");
  if (problems.length > 0) {
    throw incompatible(`node-llama-cpp internals changed; missing: ${problems.join(", ")}`, { problems });
  }
  const info = checkNativeContext(native, context, model);
  if (info.embeddingSize !== model.embeddingVectorSize) {
    throw incompatible(
      `native embedding size ${info.embeddingSize} differs from the model's ${model.embeddingVectorSize}`,
    );
  }
  return info;
}

function checkNativeContext(
  native: EmbeddingsAddon,
  context: LlamaContext,
  model: LlamaModel,
): NativeContextInfo {
  try {
    return native.checkContext(
      (context as unknown as ContextInternals)._ctx,
      (model as unknown as ModelInternals)._model,
      expectedOf(context),
    );
  } catch (err) {
    throw asRegionVqaError(err);
  }
}

/** Checks an object that claims to be a context/model pair, without using it. For tests and diagnostics. */
export function checkNativeLayout(
  contextHandle: object,
  modelHandle: object,
  expected: ExpectedContext,
): NativeContextInfo {
  try {
    return loadAddon().checkContext(contextHandle, modelHandle, expected);
  } catch (err) {
    throw asRegionVqaError(err);
  }
}

function asRegionVqaError(err: unknown): RegionVqaError {
  if (isRegionVqaError(err)) return err;
  const error = err as Error & { code?: string };
  switch (error.code) {
    case "native_incompatible":
      return incompatible(error.message);
    case "context_full":
      return new RegionVqaError("context_full", error.message);
    case "invalid_request":
      return new RegionVqaError("invalid_request", error.message);
    default:
      return new RegionVqaError("internal", `embedding evaluation failed: ${error.message ?? String(err)}`);
  }
}

function assertSequenceInternals(sequence: LlamaContextSequence): SequenceInternals {
  const seq = sequence as unknown as Partial<SequenceInternals>;
  const problems: string[] = [];
  if (typeof seq._sequenceId !== "number") problems.push("_sequenceId");
  if (typeof seq._lock !== "object" || seq._lock === null) problems.push("_lock");
  if (!Array.isArray(seq._contextTokens)) problems.push("_contextTokens");
  if (typeof seq._nextTokenIndex !== "number") problems.push("_nextTokenIndex");
  if (!Array.isArray(seq._loadedTokenPredictions)) problems.push("_loadedTokenPredictions");
  if (problems.length > 0) {
    throw incompatible(
      `node-llama-cpp LlamaContextSequence internals changed; missing: ${problems.join(", ")}`,
    );
  }
  return seq as SequenceInternals;
}

export interface EvaluateEmbeddingsOptions {
  /** Token id recorded in the sequence's token list for each embedding row (never decoded). */
  placeholderToken?: number;
  /** Return the logits after the last row (only useful when nothing follows the embeddings). */
  wantLogits?: boolean;
}

/**
 * Appends `count` embedding rows (row-major, `count x model.embeddingVectorSize`) to the sequence, as
 * if they were tokens: they get the next positions and stay in the KV cache. Holds node-llama-cpp's
 * evaluate lock of the sequence and the context lock, so no other decode or sampling runs meanwhile.
 */
export async function evaluateEmbeddings(
  sequence: LlamaContextSequence,
  embeddings: Float32Array,
  count: number,
  options: EvaluateEmbeddingsOptions = {},
): Promise<{ logits?: Float32Array }> {
  const native = loadAddon();
  const withLock = await loadWithLock();
  const context = sequence.context;
  const model = sequence.model;
  const internals = assertSequenceInternals(sequence);
  const embeddingSize = model.embeddingVectorSize;
  if (!Number.isInteger(count) || count <= 0) {
    throw new RegionVqaError("invalid_request", `embedding count must be a positive integer, got ${count}`);
  }
  if (embeddings.length !== count * embeddingSize) {
    throw new RegionVqaError(
      "invalid_request",
      `expected ${count} x ${embeddingSize} = ${count * embeddingSize} floats, got ${embeddings.length}`,
    );
  }
  if (sequence.disposed) throw new RegionVqaError("invalid_request", "the sequence is disposed");

  return withLock([internals._lock, "evaluate"], () =>
    withLock([context as object, "context"], async () => {
      const ctxInternals = context as unknown as ContextInternals;
      let preventDisposal: { dispose(): void };
      try {
        preventDisposal = ctxInternals._backendContextDisposeGuard.createPreventDisposalHandle();
      } catch {
        throw new RegionVqaError("invalid_request", "the LLM context is disposed");
      }
      try {
        if (internals._loadedTokenPredictions.length > 0) {
          throw incompatible("sequences with token predictions are not supported with embeddings");
        }
        const first = internals._nextTokenIndex;
        if (first + count > sequence.contextSize) {
          throw new RegionVqaError(
            "context_full",
            `${count} embeddings do not fit: ${first} of ${sequence.contextSize} context positions are used`,
          );
        }
        const sequenceId = internals._sequenceId;
        const backend = ctxInternals._ctx;
        const maxBefore = backend.getSequenceKvCacheMaxPosition(sequenceId);
        if (maxBefore !== first - 1) {
          throw new RegionVqaError(
            "internal",
            `KV cache of sequence ${sequenceId} ends at ${maxBefore}, expected ${first - 1}; refusing to append`,
          );
        }
        let result: { decoded: number; logits?: Float32Array };
        try {
          result = await native.decodeEmbeddings(
            backend,
            (model as unknown as ModelInternals)._model,
            expectedOf(context),
            sequenceId,
            first,
            embeddings,
            count,
            options.wantLogits ?? false,
          );
        } catch (err) {
          // Earlier chunks may already sit in the cache: drop them so the sequence stays consistent.
          backend.removeTokenCellsFromSequence(sequenceId, first, -1);
          throw asRegionVqaError(err);
        }
        const maxAfter = backend.getSequenceKvCacheMaxPosition(sequenceId);
        if (result.decoded !== count || maxAfter !== first + count - 1) {
          backend.removeTokenCellsFromSequence(sequenceId, first, -1);
          throw new RegionVqaError(
            "internal",
            `embedding decode left the KV cache at position ${maxAfter}, expected ${first + count - 1}`,
          );
        }
        const placeholder = options.placeholderToken ?? 0;
        for (let i = 0; i < count; i++) internals._contextTokens.push(placeholder);
        internals._nextTokenIndex = first + count;
        return { logits: result.logits };
      } finally {
        preventDisposal.dispose();
      }
    }),
  );
}
