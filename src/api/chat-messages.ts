/**
 * OpenAI-style chat messages -> what a region conversation needs: the system prompt, the one image,
 * earlier user/assistant turns (replayed as history) and the final question.
 */
import { RegionVqaError } from "../common/errors.js";
import { checkQuestion } from "../common/limits.js";
import type { ServerLimits } from "../config.js";
import type { Turn } from "../pipeline/types.js";

export interface ContentPart {
  type: string;
  text?: string;
  image_url?: { url?: string; detail?: string } | string;
}

export interface ChatMessage {
  role: string;
  content: string | ContentPart[] | null;
}

export interface ParsedChat {
  systemPrompt?: string;
  imageUrl: string;
  history: Turn[];
  question: string;
}

function textOf(message: ChatMessage, index: number): { text: string; images: string[] } {
  if (message.content === null || message.content === undefined) return { text: "", images: [] };
  if (typeof message.content === "string") return { text: message.content, images: [] };
  const texts: string[] = [];
  const images: string[] = [];
  for (const part of message.content) {
    if (part.type === "text") texts.push(part.text ?? "");
    else if (part.type === "image_url") {
      const url = typeof part.image_url === "string" ? part.image_url : part.image_url?.url;
      if (typeof url !== "string" || url === "") {
        throw new RegionVqaError(
          "invalid_request",
          `messages[${index}] has an image_url part without a url.`,
        );
      }
      images.push(url);
    } else {
      throw new RegionVqaError(
        "invalid_request",
        `messages[${index}] has a "${part.type}" part; only text and image_url are supported.`,
      );
    }
  }
  return { text: texts.join("\n"), images };
}

/** Messages -> system prompt, the one image, earlier turns and the final question. */
export function parseMessages(messages: ChatMessage[], limits: ServerLimits): ParsedChat {
  if (messages.length > limits.maxMessages) {
    throw new RegionVqaError(
      "invalid_request",
      `The request has ${messages.length} messages; the limit is ${limits.maxMessages}.`,
    );
  }
  const systemTexts: string[] = [];
  const images: string[] = [];
  // Consecutive messages of one role are joined: the prompt format alternates user and assistant.
  const turns: Array<{ role: "user" | "assistant"; text: string }> = [];
  messages.forEach((message, i) => {
    const { text, images: found } = textOf(message, i);
    if (message.role === "system" || message.role === "developer") {
      if (found.length > 0) throw new RegionVqaError("invalid_request", "Images belong in user messages.");
      systemTexts.push(text);
      return;
    }
    if (message.role !== "user" && message.role !== "assistant") {
      throw new RegionVqaError(
        "invalid_request",
        `messages[${i}] has role "${message.role}"; use system, user or assistant.`,
      );
    }
    if (found.length > 0 && message.role !== "user")
      throw new RegionVqaError("invalid_request", "Images belong in user messages.");
    images.push(...found);
    const last = turns[turns.length - 1];
    if (last && last.role === message.role) last.text = [last.text, text].filter((t) => t !== "").join("\n");
    else turns.push({ role: message.role, text });
  });
  if (images.length === 0) {
    throw new RegionVqaError(
      "image_missing",
      "No image: add an image_url content part (a data URL) to a user message.",
    );
  }
  if (images.length > 1) {
    throw new RegionVqaError(
      "invalid_request",
      `The messages hold ${images.length} images; a conversation is about one image.`,
    );
  }
  if (turns.length === 0 || turns[turns.length - 1].role !== "user") {
    throw new RegionVqaError("invalid_request", "The last message must be a user message with the question.");
  }
  if (turns[0].role !== "user")
    throw new RegionVqaError("invalid_request", "The conversation must start with a user message.");
  const question = checkQuestion(turns[turns.length - 1].text, limits.maxQuestionChars, "last user message");
  const history: Turn[] = [];
  for (let i = 0; i + 1 < turns.length - 1; i += 2) {
    history.push({
      question: checkQuestion(turns[i].text, limits.maxQuestionChars, "user message"),
      answer: turns[i + 1].text,
    });
  }
  const systemPrompt = systemTexts.join("\n").trim();
  return {
    systemPrompt: systemPrompt === "" ? undefined : systemPrompt,
    imageUrl: images[0],
    history,
    question,
  };
}
