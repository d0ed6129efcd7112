/**
 * LLaVA-1.5 prompt (conv template `vicuna_v1`, docs/reference.md section 3):
 *   `{system} USER: <image>\n{question} ASSISTANT:` + answer + `</s>`, then ` USER: {question} ASSISTANT:` ...
 * Text chunks are tokenised separately (as LLaVA's tokenizer_image_token does around the image), BOS
 * once at the very start. Each piece below is tokenised on its own, so a conversation built turn by turn
 * and one replayed from its history give the same tokens.
 */
import type { LlamaModel, Token } from "node-llama-cpp";
import { RegionVqaError } from "../common/errors.js";

export const LLAVA_SYSTEM_PROMPT =
  "A chat between a curious user and an artificial intelligence assistant. " +
  "The assistant gives helpful, detailed, and polite answers to the user's questions.";

export interface LlavaPromptTemplate {
  /** Replaces `{system}`. */
  systemPrompt: string;
  /** The first turn; must contain `<image>` once, `{question}` once (after it) and may contain `{system}`. */
  firstTurn: string;
  /** Each later turn; contains `{question}`. */
  nextTurn: string;
  /** Closes every answer; tokenised with special tokens, so `</s>` becomes EOS. */
  answerEnd: string;
}

export const LLAVA_V1_TEMPLATE: LlavaPromptTemplate = {
  systemPrompt: LLAVA_SYSTEM_PROMPT,
  firstTurn: "{system} USER: <image>\n{question} ASSISTANT:",
  nextTurn: " USER: {question} ASSISTANT:",
  answerEnd: "</s>",
};

export const IMAGE_PLACEHOLDER = "<image>";

/** Fills `{system}` and `{question}` in one pass, so a question containing "{system}" stays literal. */
function fill(template: string, values: { system?: string; question?: string }): string {
  return template.replace(
    /\{(system|question)\}/g,
    (match, key: "system" | "question") => values[key] ?? match,
  );
}

export function resolveTemplate(overrides: Partial<LlavaPromptTemplate> = {}): LlavaPromptTemplate {
  const template = { ...LLAVA_V1_TEMPLATE, ...overrides };
  const imageAt = template.firstTurn.indexOf(IMAGE_PLACEHOLDER);
  if (imageAt < 0 || template.firstTurn.indexOf(IMAGE_PLACEHOLDER, imageAt + 1) >= 0) {
    throw new RegionVqaError(
      "invalid_request",
      `prompt template firstTurn must contain ${IMAGE_PLACEHOLDER} exactly once`,
    );
  }
  if (!template.firstTurn.slice(imageAt).includes("{question}")) {
    throw new RegionVqaError(
      "invalid_request",
      "prompt template firstTurn must contain {question} after <image>",
    );
  }
  if (!template.nextTurn.includes("{question}")) {
    throw new RegionVqaError("invalid_request", "prompt template nextTurn must contain {question}");
  }
  return template;
}

/** Token pieces of a LLaVA conversation. Template text is tokenised without special-token parsing except `answerEnd`. */
export class LlavaPrompt {
  readonly template: LlavaPromptTemplate;
  private readonly model: LlamaModel;
  private answerEndTokens: Token[] | undefined;

  constructor(model: LlamaModel, template: Partial<LlavaPromptTemplate> = {}) {
    this.model = model;
    this.template = resolveTemplate(template);
  }

  private tokenize(text: string): Token[] {
    return text.length === 0 ? [] : this.model.tokenize(text, false);
  }

  /** Tokens before the image, BOS first (when the model wants one). */
  beforeImage(): Token[] {
    const text = fill(this.template.firstTurn.slice(0, this.template.firstTurn.indexOf(IMAGE_PLACEHOLDER)), {
      system: this.template.systemPrompt,
    });
    const bos = this.model.tokens.bos;
    const addBos = this.model.tokens.shouldPrependBosToken && bos != null;
    return [...(addBos ? [bos] : []), ...this.tokenize(text)];
  }

  /** Tokens right after the image: the first question up to the assistant's turn. */
  afterImage(question: string): Token[] {
    const template = this.template.firstTurn;
    const text = fill(template.slice(template.indexOf(IMAGE_PLACEHOLDER) + IMAGE_PLACEHOLDER.length), {
      system: this.template.systemPrompt,
      question,
    });
    return this.tokenize(text);
  }

  /** An answer as replayed from history (leading/trailing spaces are the template's business). */
  answer(text: string): Token[] {
    return this.tokenize(text);
  }

  /** The tokens that close an answer (`</s>` = EOS for LLaVA). */
  answerEnd(): Token[] {
    this.answerEndTokens ??=
      this.template.answerEnd.length === 0 ? [] : this.model.tokenize(this.template.answerEnd, true);
    return this.answerEndTokens;
  }

  /** A later turn's question up to the assistant's turn. */
  nextTurn(question: string): Token[] {
    return this.tokenize(fill(this.template.nextTurn, { system: this.template.systemPrompt, question }));
  }
}
