/**
 * `EncodeBatcher`: regions of several requests in one vision-encoder run. Requests that arrive while a
 * run is in progress wait for it and then go together (up to `maxRegions` regions); with `maxWaitMs`,
 * the first request of an idle encoder also waits that long for company. On a GPU a batch of 8 costs
 * little more than one region, so this is where throughput under load comes from; on a CPU the cost
 * grows with the batch, and batching only trades latency for nothing (`docs/benchmarks.md`), so it
 * is off there by default.
 */
import { RegionVqaError } from "../common/errors.js";
import type { Tensor } from "../common/tensor.js";

export interface EncoderBatchOptions {
  /** Most regions in one encoder run, across requests. 1 = every request runs alone (no batching). */
  maxRegions: number;
  /**
   * How long a request reaching an idle encoder waits for others, in ms. 0 = no wait: only requests
   * that queue behind a run in progress are batched.
   */
  maxWaitMs: number;
}

/** One run's inputs: pixel values [1 or n, 3, R, R] (one image) and alpha [n, 1, R, R]. */
export interface BatchInput {
  pixelValues: Tensor;
  alpha: Tensor;
}

/** A run's outputs, each with the regions along its first dimension. */
export type BatchOutputs = Record<string, Tensor | undefined>;

interface Waiting {
  input: BatchInput;
  regions: number;
  resolve(outputs: BatchOutputs): void;
  reject(err: unknown): void;
}

export interface EncodeBatcherStats {
  /** Encoder runs made. */
  runs: number;
  /** Requests (submit calls) served. */
  requests: number;
  /** Regions encoded. */
  regions: number;
}

export class EncodeBatcher {
  private readonly queue: Waiting[] = [];
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly counts: EncodeBatcherStats = { runs: 0, requests: 0, regions: 0 };

  constructor(
    private readonly run: (input: BatchInput) => Promise<BatchOutputs>,
    readonly options: EncoderBatchOptions,
  ) {
    for (const [key, least] of [
      ["maxRegions", 1],
      ["maxWaitMs", 0],
    ] as const) {
      const v = options[key];
      if (!Number.isInteger(v) || v < least)
        throw new RegionVqaError(
          "invalid_request",
          `encoder batch ${key} must be a whole number >= ${least}`,
        );
    }
  }

  stats(): EncodeBatcherStats {
    return { ...this.counts };
  }

  /** The outputs of `input`'s regions (in order), from a run shared with other requests or not. */
  submit(input: BatchInput): Promise<BatchOutputs> {
    return new Promise<BatchOutputs>((resolve, reject) => {
      this.queue.push({ input, regions: input.alpha.shape[0], resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.running) return; // the run in progress starts the next batch when it ends
    const queued = this.queue.reduce((n, w) => n + w.regions, 0);
    if (this.options.maxWaitMs === 0 || queued >= this.options.maxRegions) {
      void this.flush();
      return;
    }
    this.timer ??= setTimeout(() => void this.flush(), this.options.maxWaitMs);
  }

  private async flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.running || this.queue.length === 0) return;
    // At least one request; more while they fit (a request's regions are never split).
    let regions = this.queue[0].regions;
    let count = 1;
    while (count < this.queue.length && regions + this.queue[count].regions <= this.options.maxRegions) {
      regions += this.queue[count].regions;
      count++;
    }
    const batch = this.queue.splice(0, count);
    this.running = true;
    this.counts.runs++;
    this.counts.requests += batch.length;
    this.counts.regions += regions;
    try {
      const outputs = await this.run(batch.length === 1 ? batch[0].input : concatenate(batch));
      let offset = 0;
      for (const w of batch) {
        w.resolve(sliceOutputs(outputs, offset, w.regions));
        offset += w.regions;
      }
    } catch (err) {
      for (const w of batch) w.reject(err);
    } finally {
      this.running = false;
      if (this.queue.length > 0) void this.flush();
    }
  }
}

/** Several requests' inputs as one: each request's image repeated once per region, alphas in order. */
function concatenate(batch: Waiting[]): BatchInput {
  const [, , R] = batch[0].input.alpha.shape;
  const plane = 3 * R * R;
  const total = batch.reduce((n, w) => n + w.regions, 0);
  const pixels = new Float32Array(total * plane);
  const alpha = new Float32Array(total * R * R);
  let at = 0;
  for (const w of batch) {
    const { pixelValues, alpha: a } = w.input;
    for (let i = 0; i < w.regions; i++) {
      const image = pixelValues.shape[0] === 1 ? 0 : i;
      pixels.set(pixelValues.data.subarray(image * plane, (image + 1) * plane), (at + i) * plane);
    }
    alpha.set(a.data, at * R * R);
    at += w.regions;
  }
  return {
    pixelValues: { data: pixels, shape: [total, 3, R, R] },
    alpha: { data: alpha, shape: [total, 1, R, R] },
  };
}

/** Regions [offset, offset + n) of every output (views, no copy). */
function sliceOutputs(outputs: BatchOutputs, offset: number, n: number): BatchOutputs {
  const out: BatchOutputs = {};
  for (const [name, t] of Object.entries(outputs)) {
    if (!t) continue;
    const per = t.data.length / t.shape[0];
    out[name] = { data: t.data.subarray(offset * per, (offset + n) * per), shape: [n, ...t.shape.slice(1)] };
  }
  return out;
}
