import type { AnswerResult, AnswerStream } from "./types.js";

/**
 * A single-consumer stream of text pieces with a final result. The producer pushes pieces and then
 * ends or fails it; pieces pushed before anyone iterates are kept, so `result` alone is also fine.
 */
export class AnswerStreamController<R extends AnswerResult = AnswerResult> {
  private readonly pieces: string[] = [];
  private finished = false;
  private failure: unknown = undefined;
  private wake: (() => void) | undefined;
  private iterated = false;
  private resolveResult!: (result: R) => void;
  private rejectResult!: (err: unknown) => void;
  readonly result: Promise<R>;
  readonly stream: AnswerStream & { readonly result: Promise<R> };

  constructor() {
    this.result = new Promise<R>((resolve, reject) => {
      this.resolveResult = resolve;
      this.rejectResult = reject;
    });
    // The failure is reported to whoever iterates or awaits `result`; do not crash the process when
    // a caller only iterates.
    this.result.catch(() => undefined);
    const result = this.result;
    this.stream = { result, [Symbol.asyncIterator]: () => this.iterate() };
  }

  push(piece: string): void {
    if (this.finished || piece.length === 0) return;
    this.pieces.push(piece);
    this.notify();
  }

  end(result: R): void {
    if (this.finished) return;
    this.finished = true;
    this.resolveResult(result);
    this.notify();
  }

  fail(err: unknown): void {
    if (this.finished) return;
    this.finished = true;
    this.failure = err ?? new Error("generation failed");
    this.rejectResult(this.failure);
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private async *iterate(): AsyncGenerator<string, void, undefined> {
    if (this.iterated) throw new Error("an answer stream can be iterated only once");
    this.iterated = true;
    for (;;) {
      while (this.pieces.length > 0) yield this.pieces.shift() as string;
      if (this.finished) {
        if (this.failure !== undefined) throw this.failure;
        return;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }
}

/**
 * Turns a growing decoded text into safe pieces: holds back a trailing incomplete UTF-8 character
 * (decoded as U+FFFD) and any tail that could still become a stop string.
 */
export class StopStringFilter {
  private emitted = 0;
  private readonly stops: string[];

  constructor(stops: readonly string[] = []) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  /** Returns the new piece to emit and, when a stop string appeared, the final text before it. */
  update(text: string, final: boolean): { piece: string; stoppedText?: string } {
    let visible = text;
    if (!final) {
      // An incomplete multi-byte character decodes as trailing replacement characters (at most 3).
      let trim = 0;
      while (
        trim < 3 &&
        visible.length - trim > this.emitted &&
        visible[visible.length - 1 - trim] === "\uFFFD"
      )
        trim++;
      visible = visible.slice(0, visible.length - trim);
    }
    let stopAt = -1;
    for (const stop of this.stops) {
      const at = visible.indexOf(stop, Math.max(0, this.emitted - stop.length + 1));
      if (at >= 0 && (stopAt < 0 || at < stopAt)) stopAt = at;
    }
    if (stopAt >= 0) {
      const stoppedText = visible.slice(0, stopAt);
      const piece = stoppedText.length > this.emitted ? stoppedText.slice(this.emitted) : "";
      this.emitted = Math.max(this.emitted, stoppedText.length);
      return { piece, stoppedText };
    }
    let safeEnd = visible.length;
    if (!final) {
      for (const stop of this.stops) {
        for (let k = Math.min(stop.length - 1, visible.length); k > 0; k--) {
          if (visible.endsWith(stop.slice(0, k))) {
            safeEnd = Math.min(safeEnd, visible.length - k);
            break;
          }
        }
      }
    }
    if (safeEnd <= this.emitted) return { piece: "" };
    const piece = visible.slice(this.emitted, safeEnd);
    this.emitted = safeEnd;
    return { piece };
  }
}
