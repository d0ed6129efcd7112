/**
 * Admission control for pipeline requests (caption, ask, chat completions): at most `maxConcurrent`
 * are served at once, at most `maxQueue` more wait for a turn, and any further one is refused at once
 * with 503 `overloaded` and a Retry-After estimate. Every admitted request gets a deadline and one
 * AbortSignal that fires when the client goes away, the deadline passes or the server stops; the
 * routes hand that signal to the pipeline so that the LLM stops generating at its next token.
 */
import { RegionVqaError } from "../common/errors.js";

export interface SchedulerOptions {
  /** Requests served at once. */
  maxConcurrent: number;
  /** Requests that may wait for a turn (0: refuse as soon as every turn is taken). */
  maxQueue: number;
  /** Deadline from admission (queue wait included) to release. */
  timeoutMs: number;
  /** Called whenever the number of served or waiting requests changes. */
  onDepth?: (active: number, waiting: number) => void;
  /** Called when a request is refused or cut short ("queue_full", "queue_timeout", "deadline", "shutdown"). */
  onRejected?: (reason: string) => void;
}

/** One admitted request: its signal, and `release()` once its work is over (idempotent). */
export interface Lease {
  readonly signal: AbortSignal;
  /** Throws the reason the signal fired (timeout, client gone, shutdown), if it fired. */
  throwIfAborted(): void;
  /**
   * The error to report for a failure: the signal's reason when it fired (a stage that noticed the
   * abort throws its own generic error), else `err` itself.
   */
  reasonFor(err: unknown): unknown;
  release(): void;
}

interface Waiter {
  grant: () => void;
}

const MIN_RETRY_AFTER_S = 1;
const MAX_RETRY_AFTER_S = 60;

export class RequestScheduler {
  private active = 0;
  private readonly waiting: Waiter[] = [];
  private readonly leases = new Set<LeaseImpl>();
  /**
   * Every lease not yet disposed, served or waiting: what `abortAll` stops. (A listener per lease on
   * one shared signal would pile up under load: Node warns past 10 on one AbortSignal.)
   */
  private readonly live = new Set<LeaseImpl>();
  private stopReason: RegionVqaError | undefined;
  /** Moving average of how long a request holds its turn, for Retry-After. */
  private averageHoldSeconds = 1;
  private draining = false;

  constructor(private readonly options: SchedulerOptions) {
    if (!Number.isInteger(options.maxConcurrent) || options.maxConcurrent < 1) {
      throw new RegionVqaError("invalid_request", "maxConcurrent must be a whole number >= 1");
    }
  }

  get stats(): { active: number; waiting: number } {
    return { active: this.active, waiting: this.waiting.length };
  }

  /** Seconds after which a refused client may reasonably try again: the queue ahead of it, drained. */
  retryAfterSeconds(): number {
    const ahead = this.waiting.length + 1;
    const estimate = Math.ceil((this.averageHoldSeconds * ahead) / this.options.maxConcurrent);
    return Math.min(MAX_RETRY_AFTER_S, Math.max(MIN_RETRY_AFTER_S, estimate));
  }

  private overloaded(message: string): RegionVqaError {
    const retryAfterSeconds = this.retryAfterSeconds();
    return new RegionVqaError("overloaded", `${message} Try again in ${retryAfterSeconds} s.`, {
      retryAfterSeconds,
    });
  }

  /**
   * Waits for a turn. `clientSignal` is the client's connection: when it closes, the lease's signal
   * fires (or, while still waiting, the wait ends with `aborted`).
   */
  async admit(clientSignal?: AbortSignal): Promise<Lease> {
    if (this.draining) {
      this.options.onRejected?.("shutdown");
      throw this.overloaded("The server is shutting down.");
    }
    if (clientSignal?.aborted) throw new RegionVqaError("aborted", "The client closed the connection.");
    if (this.active >= this.options.maxConcurrent && this.waiting.length >= this.options.maxQueue) {
      this.options.onRejected?.("queue_full");
      throw this.overloaded(
        `The server is busy: ${this.active} requests are being served and ${this.waiting.length} are waiting.`,
      );
    }
    const lease = new LeaseImpl(this, this.options.timeoutMs, clientSignal);
    if (this.active < this.options.maxConcurrent) {
      this.start(lease);
      return lease;
    }
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          lease.signal.removeEventListener("abort", onAbort);
          this.start(lease);
          resolve();
        },
      };
      const onAbort = (): void => {
        const at = this.waiting.indexOf(waiter);
        if (at >= 0) this.waiting.splice(at, 1);
        this.report();
        lease.dispose();
        const reason: unknown = lease.signal.reason;
        if (reason instanceof RegionVqaError && reason.code === "timeout") {
          // Never started: the server was too busy, which is what 503 + Retry-After says.
          this.options.onRejected?.("queue_timeout");
          reject(this.overloaded(`No turn came free within ${this.options.timeoutMs} ms.`));
        } else {
          reject(reason);
        }
      };
      lease.signal.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
      this.report();
    });
    return lease;
  }

  private start(lease: LeaseImpl): void {
    this.active++;
    this.leases.add(lease);
    lease.startedAt = performance.now();
    this.report();
  }

  /** @internal Called once by a started lease. */
  finish(lease: LeaseImpl): void {
    if (!this.leases.delete(lease)) return;
    const held = (performance.now() - lease.startedAt) / 1000;
    this.averageHoldSeconds = 0.8 * this.averageHoldSeconds + 0.2 * held;
    this.active--;
    // The freed turn goes straight to the longest-waiting request.
    const next = this.waiting.shift();
    if (next) next.grant();
    else this.report();
  }

  /** @internal */
  rejected(reason: string): void {
    this.options.onRejected?.(reason);
  }

  private report(): void {
    this.options.onDepth?.(this.active, this.waiting.length);
  }

  /** Refuses new requests from now on (503); requests already admitted or waiting carry on. */
  drain(): void {
    this.draining = true;
  }

  /** Aborts every request being served or waiting (shutdown after its grace period). */
  abortAll(reason: RegionVqaError): void {
    this.draining = true;
    this.stopReason ??= reason;
    for (const lease of [...this.live]) lease.abort(reason);
  }

  /** @internal A new lease: aborted at once when the server has stopped. */
  track(lease: LeaseImpl): void {
    if (this.stopReason) lease.abort(this.stopReason);
    else this.live.add(lease);
  }

  /** @internal A lease whose timer and listeners are gone. */
  untrack(lease: LeaseImpl): void {
    this.live.delete(lease);
  }

  /** Leases not yet released (served or waiting): 0 once a burst is over. */
  get liveLeases(): number {
    return this.live.size;
  }
}

class LeaseImpl implements Lease {
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private readonly unlink: () => void;
  startedAt = 0;
  private released = false;

  constructor(
    private readonly scheduler: RequestScheduler,
    timeoutMs: number,
    clientSignal: AbortSignal | undefined,
  ) {
    this.timer = setTimeout(() => {
      if (this.startedAt > 0) scheduler.rejected("deadline");
      this.abort(
        new RegionVqaError(
          "timeout",
          `The request took longer than the server's limit of ${timeoutMs} ms and was stopped.`,
          { timeoutMs },
        ),
      );
    }, timeoutMs);
    const onClient = (): void =>
      this.abort(new RegionVqaError("aborted", "The client closed the connection."));
    clientSignal?.addEventListener("abort", onClient, { once: true });
    this.unlink = () => {
      clientSignal?.removeEventListener("abort", onClient);
      scheduler.untrack(this);
    };
    scheduler.track(this);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  abort(reason: RegionVqaError): void {
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }

  throwIfAborted(): void {
    if (this.controller.signal.aborted) throw this.controller.signal.reason;
  }

  reasonFor(err: unknown): unknown {
    return this.controller.signal.aborted ? this.controller.signal.reason : err;
  }

  /** Stops the timer and listeners without touching the scheduler's counts (never started). */
  dispose(): void {
    clearTimeout(this.timer);
    this.unlink();
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.dispose();
    this.scheduler.finish(this);
  }
}
