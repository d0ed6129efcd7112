/**
 * A conversation's transcript: what any replica needs to continue it. The image itself is not in it:
 * `featureKey` names the region's embeddings in the shared feature cache, and `models` must equal the
 * continuing replica's own model identity, so a replica never continues a conversation of other models.
 */
export interface Transcript {
  version: 1;
  id: string;
  /** Identity of vision + projector + LLM (see `modelIdentity`). */
  models: string;
  /** Shared-cache key of the region's embeddings. */
  featureKey: string;
  systemPrompt?: string;
  turns: Array<{ question: string; answer: string }>;
  updatedAt: string;
}

/** Most turns a transcript may hold (a conversation is bounded by its context far below this). */
const MAX_TURNS = 10_000;

/** Parses a stored transcript; undefined for anything malformed or of another format version. */
export function parseTranscript(text: string, id: string): Transcript | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const t = value as Record<string, unknown>;
  const isText = (v: unknown): v is string => typeof v === "string";
  if (t.version !== 1 || t.id !== id || !isText(t.models) || !isText(t.featureKey) || !isText(t.updatedAt)) {
    return undefined;
  }
  if (t.systemPrompt !== undefined && !isText(t.systemPrompt)) return undefined;
  if (!Array.isArray(t.turns) || t.turns.length > MAX_TURNS) return undefined;
  const turns: Transcript["turns"] = [];
  for (const turn of t.turns as unknown[]) {
    const q = (turn as { question?: unknown })?.question;
    const a = (turn as { answer?: unknown })?.answer;
    if (!isText(q) || !isText(a)) return undefined;
    turns.push({ question: q, answer: a });
  }
  return {
    version: 1,
    id,
    models: t.models,
    featureKey: t.featureKey,
    ...(t.systemPrompt !== undefined ? { systemPrompt: t.systemPrompt } : {}),
    turns,
    updatedAt: t.updatedAt,
  };
}
